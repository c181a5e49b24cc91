package bench

import (
	"fmt"
	"slices"
)

// Spread is the median of a set of measurements with its extremes. On a
// shared machine the extremes are the honest error bar: a mean would hide
// how far one noisy repetition can fall.
type Spread struct {
	N                int
	Median, Min, Max float64
}

// SpreadOf summarises xs; it is zero for no values.
func SpreadOf(xs []float64) Spread {
	if len(xs) == 0 {
		return Spread{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return Spread{N: len(s), Median: m, Min: s[0], Max: s[len(s)-1]}
}

// Format prints the median and the range with the given verb, e.g. "%.3f".
func (s Spread) Format(verb string) string {
	if s.N == 0 {
		return "-"
	}
	return fmt.Sprintf(verb+" ("+verb+"–"+verb+")", s.Median, s.Min, s.Max)
}
