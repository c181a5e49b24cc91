package store

import (
	"fmt"
	"log/slog"
)

// Attribute keys of the store's log messages.
const (
	logKeySubscriber = "subscriber"
	logKeyPublic     = "public"
	logKeyPortLo     = "port_lo"
	logKeyStart      = "start"
	logKeyOtherStart = "other_start"
	logKeyEnd        = "end"
	logKeyDetail     = "detail"
	logKeyCutoff     = "cutoff"
	logKeyOldestDay  = "oldest_day"
	logKeyRecords    = "records"
	logKeyEpochs     = "epochs"
	logKeyPartitions = "partitions"
	logKeyDuration   = "duration"
	logKeyError      = "error"
	logKeyInside     = "inside"
	logKeyTime       = "time"
	logKeyLeases     = "leases"
	logKeyLayout     = "layout"
	logKeyFromLayout = "from_layout"
	logKeyDone       = "partitions_done"
	logKeySeq        = "seq"
	logKeyEvents     = "events"
	logKeyKind       = "kind"
)

// pebbleLogger sends Pebble's messages to slog.
type pebbleLogger struct{ log *slog.Logger }

func (l pebbleLogger) Infof(format string, args ...any) {
	l.log.Info("pebble", logKeyDetail, fmt.Sprintf(format, args...))
}

func (l pebbleLogger) Errorf(format string, args ...any) {
	l.log.Error("pebble", logKeyDetail, fmt.Sprintf(format, args...))
}

// Fatalf is called on corruption or a broken invariant, after which Pebble
// must not continue. Panicking lets the agent's supervisor restart it and
// keeps os.Exit out of a library.
func (l pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	l.log.Error("pebble fatal", logKeyDetail, msg)
	panic("pebble: " + msg)
}
