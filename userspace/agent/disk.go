package agent

import (
	"fmt"
	"time"

	"github.com/blocknat/blocknat/userspace/diskspace"
	"github.com/blocknat/blocknat/userspace/logattr"
	"github.com/blocknat/blocknat/userspace/store"
)

// diskCheckInterval is how often the free space is read when nothing
// writes (every store write reads it too), so that the alarm rises and
// ends on time and the reserve is made again once there is room.
const diskCheckInterval = 2 * time.Second

// prepareStateDir makes state_dir private and reads its free space, before
// anything is written under it.
func (a *Agent) prepareStateDir() error {
	if err := a.keepPrivate(); err != nil {
		return err
	}
	return a.startDisk()
}

// startDisk reads state_dir's free space before the store opens. On a
// full disk it gives up the reserve so that the store can open, and the
// agent comes up with the alarm raised rather than not at all: the data
// plane and the kernel's tables keep what cannot be written yet.
func (a *Agent) startDisk() error {
	a.disk = diskspace.New(a.cfg.StateDir, diskLimits(a.cfg), a.log)
	st := a.disk.Start()
	if st.Err != "" {
		return fmt.Errorf("state_dir %s: cannot read its free space: %s", a.cfg.StateDir, st.Err)
	}
	if st.Low {
		a.log.Error("starting with state_dir short of space: records are kept in memory until there is room; the alarm is raised",
			logattr.Path, a.cfg.StateDir, "reason", st.Reason())
		return nil
	}
	a.disk.Maintain()
	return nil
}

// diskHint adds the free space to an error when it may be the cause.
func (a *Agent) diskHint() string {
	if reason := a.disk.State().Reason(); reason != "" {
		return " (" + reason + ")"
	}
	return ""
}

// epochWritable refuses to put a new epoch in force while it cannot be
// recorded: lookups of the time it was in force would have no mapping to
// answer from. An epoch already on record (a restart, an unchanged
// mapping) needs nothing new written.
func (a *Agent) epochWritable(e store.Epoch, latest *store.Epoch) error {
	if latest != nil && latest.ID == e.ID {
		return nil
	}
	if err := a.disk.Writable(); err != nil {
		return fmt.Errorf("the mapping starts epoch %d, which cannot be recorded now: %w; free room under state_dir %s", e.ID, err, a.cfg.StateDir)
	}
	return nil
}
