package config

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// integerFields are the paths ("ports.block_size", "roles.admin.uids") and
// kinds of every integer-typed field of the configuration, found by
// reflection so that a field added later is covered too.
func integerFields(t reflect.Type, prefix string) map[string]reflect.Kind {
	out := map[string]reflect.Kind{}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	for i := range t.NumField() {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if tag == "" || tag == "-" || !f.IsExported() {
			continue
		}
		path := strings.TrimPrefix(prefix+"."+tag, ".")
		ft := f.Type
		for ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice {
			ft = ft.Elem()
		}
		switch ft.Kind() {
		case reflect.Struct:
			for k, v := range integerFields(ft, path) {
				out[k] = v
			}
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
			reflect.Uint8, reflect.Uint16, reflect.Uint32:
			// Duration and ByteSize are integers written as text, with
			// errors of their own; uint64 holds every number YAML does.
			if ft.PkgPath() == "" {
				out[path] = ft.Kind()
			}
		}
	}
	return out
}

// nest writes value at a dotted path in flow style, a list where the
// field is one.
func nest(t reflect.Type, path, value string) string {
	name, rest, _ := strings.Cut(path, ".")
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	for i := range t.NumField() {
		f := t.Field(i)
		if tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ","); tag != name {
			continue
		}
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if rest == "" {
			if ft.Kind() == reflect.Slice {
				return name + ": [" + value + "]"
			}
			return name + ": " + value
		}
		return name + ": {" + nest(ft, rest, value) + "}"
	}
	panic("no field " + path)
}

// TestIntegerOutOfRangeNamesFieldLineAndRange: for every integer field of
// the configuration, a value its type cannot hold is refused naming the
// field, the line and the range allowed, not the Go type.
func TestIntegerOutOfRangeNamesFieldLineAndRange(t *testing.T) {
	fields := integerFields(reflect.TypeOf(Config{}), "")
	for _, want := range []string{"ports.block_size", "max_flows", "roles.admin.uids", "audit.checkpoint_every", "export.ipfix.observation_domain"} {
		if _, ok := fields[want]; !ok {
			t.Fatalf("reflection missed %s: found %v", want, fields)
		}
	}
	const base = "inside: {interfaces: [a], prefixes: [100.64.0.0/24]}\noutside: {interfaces: [b], pool: [198.51.100.10/31]}\n"
	for path := range fields {
		for _, bad := range []string{"99999999999999999999", "-99999999999999999999", "lots"} {
			yaml := base + nest(reflect.TypeOf(Config{}), path, bad) + "\n"
			_, err := Parse([]byte(yaml))
			if err == nil {
				t.Errorf("%s: %s accepted", path, bad)
				continue
			}
			msg := err.Error()
			for _, want := range []string{path, bad + " is not a whole number from ", "(line 3,"} {
				if !strings.Contains(msg, want) {
					t.Errorf("%s = %s: %q does not say %q", path, bad, msg, want)
				}
			}
			if strings.Contains(msg, "Go value") || strings.Contains(msg, "Go struct") || strings.Contains(msg, "( overflow )") {
				t.Errorf("%s = %s: %q speaks of Go types", path, bad, msg)
			}
		}
	}
}

// TestBlockSizeOverflow is the case, word for word.
func TestBlockSizeOverflow(t *testing.T) {
	_, err := Parse([]byte("inside: {interfaces: [a], prefixes: [100.64.0.0/24]}\noutside: {interfaces: [b], pool: [198.51.100.10/31]}\nports:\n  block_size: 70000\n"))
	want := "ports.block_size: 70000 is not a whole number from 0 to 65535 (line 4, column 15)"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("err = %v, want %q", err, want)
	}
	_, err = Parse([]byte("inside: {interfaces: [a], prefixes: [100.64.0.0/24]}\noutside: {interfaces: [b], pool: [198.51.100.10/31]}\nmax_flows: 99999999999\n"))
	if want := fmt.Sprintf("max_flows: 99999999999 is not a whole number from 0 to %d", MaxFlows); err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("err = %v, want %q", err, want)
	}
}
