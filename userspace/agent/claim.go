package agent

import (
	"os"
	"path/filepath"

	"github.com/blocknat/blocknat/loader"
	"github.com/blocknat/blocknat/userspace/logattr"
)

// claim takes the data plane for this agent (claimDataPlane).
func (a *Agent) claim(configPath string) (err error) {
	a.owner, err = a.claimDataPlane(configPath)
	return err
}

// claimDataPlane makes bpffs_dir usable on a bpffs that outlives the
// agent, says what that took, and takes the data plane for this agent. A
// bpffs that would vanish with the agent, or a data plane another agent
// holds, refuses the start, naming the cause and the fix, or the holder.
func (a *Agent) claimDataPlane(configPath string) (*loader.Owner, error) {
	dir := a.cfg.BPFFSDir
	setup, err := loader.PrepareBPFFS(dir)
	if err != nil {
		return nil, err
	}
	if setup.HostMountedAt != "" {
		a.log.Info("mounted a bpffs in the host's mount namespace", logattr.Path, setup.HostMountedAt, logattr.HostPID, setup.HostPID)
	}
	if setup.SharedAt != "" {
		a.log.Info("bpffs shared from the host's mount namespace: pins outlive this agent's own", logattr.Path, setup.SharedAt,
			logattr.HostPID, setup.HostPID, logattr.PinDir, dir)
	}
	if setup.MountedAt != "" {
		a.log.Info("mounted a bpffs", logattr.Path, setup.MountedAt, logattr.PinDir, dir)
	}
	if configPath != "" {
		if abs, err := filepath.Abs(configPath); err == nil {
			configPath = abs
		}
	}
	return loader.ClaimDataPlane(dir, loader.OwnerInfo{PID: os.Getpid(), Started: a.started, StateDir: a.cfg.StateDir, Config: configPath})
}
