# shellcheck shell=sh
# Reads apt's sources in both of their formats, so that provisioning finds
# the box's Debian mirror whichever one the image uses: one-line entries
# (sources.list, sources.list.d/*.list; "deb [options] URI SUITE COMPONENT...")
# or deb822 stanzas (sources.list.d/*.sources; "Types:", "URIs:", "Suites:",
# "Enabled:"). The Vagrantfile pastes this file into its provisioning
# script; vagrant/apt_sources_test.go runs it against samples of both.

# The files apt reads, in apt's order.
APT_SOURCE_FILES="/etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources"

# apt_sources FILE...: prints "URI SUITE" for every suite of every enabled
# binary ("deb") source in the files. Missing files are skipped: a glob
# that matched nothing stays a pattern.
apt_sources() {
	for f in "$@"; do
		[ -f "$f" ] && printf '%s\n' "$f"
	done | while IFS= read -r f; do
		case $f in
		*.sources) format=deb822 ;;
		*) format=oneline ;;
		esac
		awk -v format="$format" '
			function flush(   i, j, nu, ns, u, s) {
				if (types ~ /(^| )deb( |$)/ && enabled != "no") {
					nu = split(uris, u, " "); ns = split(suites, s, " ")
					for (i = 1; i <= nu; i++) for (j = 1; j <= ns; j++) print u[i], s[j]
				}
				types = uris = suites = enabled = ""
			}
			format == "oneline" {
				sub(/#.*/, "")
				if ($1 != "deb") next
				i = 2
				# Options: "[arch=amd64 signed-by=...]", maybe spread over fields.
				if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
				if (i + 1 <= NF) print $i, $(i + 1)
				next
			}
			/^[ \t]*$/ { flush(); next }
			/^#/ || /^[ \t]/ { next }
			{
				key = tolower($1); sub(/:$/, "", key)
				value = $0; sub(/^[^:]*:[ \t]*/, "", value)
				if (key == "types") types = value
				else if (key == "uris") uris = value
				else if (key == "suites") suites = value
				else if (key == "enabled") enabled = tolower(value)
			}
			END { if (format == "deb822") flush() }
		' "$f"
	done
}

# bookworm_mirror FILE...: the URI of the first source that has the suite
# bookworm itself; nothing when there is none.
bookworm_mirror() {
	apt_sources "$@" | awk '$2 == "bookworm" { print $1; exit }'
}

# has_suite SUITE FILE...: succeeds when an enabled source has SUITE.
has_suite() {
	suite=$1
	shift
	apt_sources "$@" | awk -v suite="$suite" '$2 == suite { found = 1 } END { exit !found }'
}
