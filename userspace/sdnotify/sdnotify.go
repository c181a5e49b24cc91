// Package sdnotify tells the service manager how the agent is doing, by
// the sd_notify protocol: one datagram of "KEY=VALUE" lines to the unix
// socket named in $NOTIFY_SOCKET (an "@" at its start names an abstract
// socket). A unit with Type=notify is started only once READY=1 arrives,
// so that what is ordered after it, and `systemctl start` itself, waits
// for translation rather than for the process to exist.
//
// It is the protocol's few lines rather than a library: the module proxy
// this project builds from does not serve github.com/coreos/go-systemd.
package sdnotify

import (
	"fmt"
	"net"
	"os"
	"strings"
)

// Socket is the environment variable that names the service manager's
// socket; unset when the agent was not started by one.
const Socket = "NOTIFY_SOCKET"

// Notify sends state ("READY=1", "STOPPING=1", "STATUS=...", one per
// line) to the service manager. Without $NOTIFY_SOCKET it does nothing
// and reports false.
func Notify(state ...string) (sent bool, err error) {
	path := os.Getenv(Socket)
	if path == "" {
		return false, nil
	}
	if strings.HasPrefix(path, "@") {
		path = "\x00" + path[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return false, fmt.Errorf("sd_notify %s: %w", os.Getenv(Socket), err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(strings.Join(state, "\n"))); err != nil {
		return false, fmt.Errorf("sd_notify %s: %w", os.Getenv(Socket), err)
	}
	return true, nil
}
