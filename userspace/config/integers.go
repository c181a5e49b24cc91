package config

import (
	"math"
	"regexp"
	"strconv"
)

// integerType finds the Go integer type in the decoder's refusal of a
// value that does not fit a field ("cannot unmarshal 70000 into Go value
// of type uint16 ( overflow )", "cannot unmarshal string into Go struct
// field Config.Ports of type uint16").
var integerType = regexp.MustCompile(`^cannot unmarshal .* of type (u?int(?:8|16|32|64)?)\b`)

// narrower are the integer fields whose validation allows less than their
// type holds; a value their type cannot hold is refused naming the range
// validation would apply, so the operator learns it once.
var narrower = map[string][2]string{
	"max_flows":              {"0", strconv.Itoa(MaxFlows)},
	"audit.checkpoint_every": {"1", strconv.Itoa(math.MaxInt)},
	"pcp.max_mappings":       {"1", strconv.Itoa(MaxPCPMappings)},
	"pcp.burst":              {"1", strconv.Itoa(math.MaxInt)},
}

// integerRangeOf is the range ("0 to 65535") that field, of the integer
// type a decode error names, takes; false when msg names no integer type.
func integerRangeOf(msg, field string) (string, bool) {
	m := integerType.FindStringSubmatch(msg)
	if m == nil {
		return "", false
	}
	lo, hi := integerRange(m[1])
	if r, ok := narrower[field]; ok {
		lo, hi = r[0], r[1]
	}
	return lo + " to " + hi, true
}

// integerRange is the smallest and largest value of a Go integer type,
// by name, as text.
func integerRange(typ string) (lo, hi string) {
	switch typ {
	case "uint8":
		return "0", strconv.FormatUint(math.MaxUint8, 10)
	case "uint16":
		return "0", strconv.FormatUint(math.MaxUint16, 10)
	case "uint32":
		return "0", strconv.FormatUint(math.MaxUint32, 10)
	case "uint", "uint64":
		return "0", strconv.FormatUint(math.MaxUint64, 10)
	case "int8":
		return strconv.Itoa(math.MinInt8), strconv.Itoa(math.MaxInt8)
	case "int16":
		return strconv.Itoa(math.MinInt16), strconv.Itoa(math.MaxInt16)
	case "int32":
		return strconv.Itoa(math.MinInt32), strconv.Itoa(math.MaxInt32)
	}
	return strconv.Itoa(math.MinInt), strconv.Itoa(math.MaxInt)
}
