// Package pgtest starts a PostgreSQL server of a test's own: Debian's
// PostgreSQL 15, initialised in a temporary directory and listening only
// on a unix socket there, so that tests never touch a machine's real
// database and two test binaries never meet. The server runs with fsync
// on, as production does, because the crash tests (Kill9) are about what
// survives a crash.
//
// initdb and postgres refuse to run as root, so when the test runs as root
// (as CI does) both run as the Debian postgres user, on a directory chowned
// to it. Without the binaries the test is skipped, or fails when
// BLOCKNAT_REQUIRE_PRIVILEGED=1.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/blocknat/blocknat/test/netns"
)

// BinDir is where Debian installs PostgreSQL 15's server programs.
const BinDir = "/usr/lib/postgresql/15/bin"

// Superuser is the bootstrap superuser initdb creates.
const Superuser = "postgres"

// port only names the socket file: the server listens on no TCP port.
const port = 5432

// Server is one running (or killed) PostgreSQL cluster.
type Server struct {
	dir  string // data directory's parent and the socket directory
	data string
	logf string
	cred *syscall.Credential // nil: run as ourselves

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has been waited for
}

// Start initialises and starts a server, and stops it and removes its
// directory in t.Cleanup, whatever the test's outcome.
func Start(t testing.TB) *Server {
	t.Helper()
	for _, prog := range []string{"initdb", "postgres"} {
		if _, err := os.Stat(filepath.Join(BinDir, prog)); err != nil {
			skipOrFail(t, fmt.Sprintf("needs PostgreSQL 15 (%s): %v", filepath.Join(BinDir, prog), err))
		}
	}
	// Not t.TempDir: its parents are private to root, and postgres must
	// reach the directory. The socket path must also stay under the
	// kernel's 108 bytes.
	dir, err := os.MkdirTemp("", "pgtest-")
	if err != nil {
		t.Fatalf("pgtest: temp dir: %v", err)
	}
	s := &Server{dir: dir, data: filepath.Join(dir, "data"), logf: filepath.Join(dir, "postgres.log")}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("pgtest: server log (last lines):\n%s", s.logTail(40))
		}
		s.stop(t)
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("pgtest: remove %s: %v", dir, err)
		}
	})
	if os.Geteuid() == 0 {
		s.cred, err = postgresCredential(dir)
		if err != nil {
			skipOrFail(t, "pgtest: "+err.Error())
		}
	}
	initdb := s.command(filepath.Join(BinDir, "initdb"), "-D", s.data, "-U", Superuser,
		"--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync")
	if out, err := initdb.CombinedOutput(); err != nil {
		t.Fatalf("pgtest: initdb: %v\n%s", err, out)
	}
	s.start(t)
	return s
}

func skipOrFail(t testing.TB, reason string) {
	t.Helper()
	if os.Getenv(netns.RequirePrivilegedEnv) == "1" {
		t.Fatalf("%s (%s=1 forbids skipping)", reason, netns.RequirePrivilegedEnv)
	}
	t.Skip(reason)
}

// postgresCredential hands dir to the postgres user and returns that
// user's credential for the server's processes.
func postgresCredential(dir string) (*syscall.Credential, error) {
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root needs the postgres user to run initdb and postgres: %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("postgres uid %q: %w", u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("postgres gid %q: %w", u.Gid, err)
	}
	if err := os.Chown(dir, int(uid), int(gid)); err != nil {
		return nil, fmt.Errorf("chown %s to postgres: %w", dir, err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, nil
}

func (s *Server) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Dir = s.dir
	cmd.Env = []string{"PATH=" + BinDir + ":/usr/bin:/bin", "LC_ALL=C", "HOME=" + s.dir}
	// Its own process group, so that a signal to the test's group (^C)
	// does not reach it before Cleanup stops it in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred, Setpgid: true}
	return cmd
}

// start runs postgres as a child of the test, so that after Kill9 the
// test reaps it and a restart finds its pid gone.
func (s *Server) start(t testing.TB) {
	t.Helper()
	logFile, err := os.OpenFile(s.logf, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatalf("pgtest: open log: %v", err)
	}
	defer logFile.Close()
	if s.cred != nil {
		if err := logFile.Chown(int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			t.Fatalf("pgtest: chown log: %v", err)
		}
	}
	cmd := s.command(filepath.Join(BinDir, "postgres"), "-D", s.data,
		"-c", "listen_addresses=",
		"-c", "unix_socket_directories="+s.dir,
		"-c", "port="+strconv.Itoa(port),
		"-c", "fsync=on",
		"-c", "synchronous_commit=on",
		"-c", "full_page_writes=on",
		"-c", "max_connections=60",
		"-c", "shared_buffers=32MB",
		"-c", "log_min_messages=warning",
	)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Backends of a killed postmaster exit once they notice; until they
	// have, a new postmaster refuses the old shared memory. Retry briefly.
	deadline := time.Now().Add(30 * time.Second)
	for {
		err = s.tryStart(cmd)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
		cmd = s.command(cmd.Path, cmd.Args[1:]...)
		cmd.Stdout, cmd.Stderr = logFile, logFile
	}
	if err != nil {
		t.Fatalf("pgtest: start postgres: %v\n%s", err, s.logTail(20))
	}
}

// tryStart starts cmd and waits until the server accepts connections, or
// returns why not.
func (s *Server) tryStart(cmd *exec.Cmd) error {
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(done) }()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-done:
			return fmt.Errorf("postgres exited: %v", waitErr)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := pgx.Connect(ctx, s.DSN(Superuser, "postgres"))
		if err == nil {
			err = conn.Ping(ctx)
			conn.Close(ctx)
		}
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after 60s: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop shuts the server down (fast shutdown: sessions are ended), or
// kills it if it does not stop in time. A stopped server stays stopped.
func (s *Server) stop(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Errorf("pgtest: postgres did not stop in 30s; killing it")
		_ = cmd.Process.Kill()
		<-done
	}
}

// Dir is the server's directory; its socket is there.
func (s *Server) Dir() string { return s.dir }

// DSN returns a connection string for user to database db over the
// server's socket.
func (s *Server) DSN(user, db string) string {
	return fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable", s.dir, port, user, db)
}

// Exec runs sql as the superuser in the postgres database.
func (s *Server) Exec(t testing.TB, sql string) {
	t.Helper()
	s.ExecIn(t, "postgres", sql)
}

// ExecIn runs sql as the superuser in database db.
func (s *Server) ExecIn(t testing.TB, db, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.DSN(Superuser, db))
	if err != nil {
		t.Fatalf("pgtest: connect to %s as %s: %v", db, Superuser, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatalf("pgtest: exec in %s: %v\n%s", db, err, sql)
	}
}

// CreateRole creates a role with the given options, as CREATE ROLE
// takes them (e.g. "LOGIN", "IN ROLE blocknat_router", "CREATEROLE").
func (s *Server) CreateRole(t testing.TB, name string, options ...string) {
	t.Helper()
	s.Exec(t, fmt.Sprintf("CREATE ROLE %s %s", pgx.Identifier{name}.Sanitize(), strings.Join(options, " ")))
}

// CreateDB creates database name owned by owner.
func (s *Server) CreateDB(t testing.TB, name, owner string) {
	t.Helper()
	s.Exec(t, fmt.Sprintf("CREATE DATABASE %s OWNER %s", pgx.Identifier{name}.Sanitize(), pgx.Identifier{owner}.Sanitize()))
}

// Kill9 kills the postmaster with SIGKILL, the pid read from
// postmaster.pid as an operator would, and waits until it is gone. Its
// backends notice and exit on their own; Restart then runs crash recovery.
func (s *Server) Kill9(t testing.TB) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.data, "postmaster.pid"))
	if err != nil {
		t.Fatalf("pgtest: kill -9: read postmaster.pid: %v", err)
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil {
		t.Fatalf("pgtest: kill -9: postmaster.pid: %q: %v", first, err)
	}
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil || cmd.Process.Pid != pid {
		t.Fatalf("pgtest: kill -9: postmaster.pid names %d, not the server this test started", pid)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("pgtest: kill -9 %d: %v", pid, err)
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("pgtest: postmaster %d still running 30s after SIGKILL", pid)
	}
}

// Restart stops the server if it runs and starts it again on the same
// data directory: after Kill9, that is crash recovery.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.stop(t)
	s.start(t)
}

// logTail returns the last n lines of the server's log.
func (s *Server) logTail(n int) string {
	b, err := os.ReadFile(s.logf)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
