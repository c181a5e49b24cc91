package sdnotify

import (
	"net"
	"path/filepath"
	"testing"
	"time"
)

// TestNotifySendsOneDatagram: the states arrive as one datagram of lines
// on the socket $NOTIFY_SOCKET names, a path or an abstract name.
func TestNotifySendsOneDatagram(t *testing.T) {
	for _, name := range []string{filepath.Join(t.TempDir(), "notify"), "@blocknat-sdnotify-test"} {
		addr := name
		if addr[0] == '@' {
			addr = "\x00" + addr[1:]
		}
		conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		t.Setenv(Socket, name)
		sent, err := Notify("READY=1", "STATUS=translating")
		if err != nil || !sent {
			t.Fatalf("%s: Notify = %v, %v", name, sent, err)
		}
		conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 256)
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		if got := string(buf[:n]); got != "READY=1\nSTATUS=translating" {
			t.Errorf("%s: got %q", name, got)
		}
		conn.Close()
	}
}

// TestNotifyWithoutManager: outside a service manager nothing is sent
// and nothing fails.
func TestNotifyWithoutManager(t *testing.T) {
	t.Setenv(Socket, "")
	if sent, err := Notify("READY=1"); sent || err != nil {
		t.Fatalf("Notify = %v, %v", sent, err)
	}
}
