# One hibernate cycle of bench/swsusp.py on the Debian guest, the same for
# kexechibd and for the kernel's own hibernation (swsusp): which one runs is
# the disk's doing (kexechibd's package installed, or a swap disk and
# `resume=` on the command line); this script only asks logind.
#
# The fill, the same for both: the workload's files (every file under
# /usr) read into the page cache, and a process holding anonymous memory
# that compresses like a heap and random data (kexechib.lab.anon_mib,
# kexechib.lab.random_mib; workload.py). Markers (host clock on the console):
#   h-fill    cold_read=S                  the files' first read, from the disk
#   h-before  warm_read=S memfree=… cached=… anonpages=… (KiB)
#   h-request                              right before logind's Hibernate
#   h-back    status=… signals=…           logind's job has ended: resumed
#   h-running memory=intact …              the fill's process checked itself
#   h-after   reread=S memfree=… cached=… anonpages=…
#   h-limit   write_mb_s=… read_mb_s=…     dd of kexechib.lab.limit_mib MiB to and
#             from the scratch disk (kexechib.lab.scratch), past the page cache
. /usr/lib/kexechib-lab/lab.sh

FILES=/usr
FILL=/run/kexechib-fill
ANON=$(cmdline_value kexechib.lab.anon_mib)
RANDOM_MIB=$(cmdline_value kexechib.lab.random_mib)

meminfo() {
	awk '/^(MemFree|Cached|AnonPages):/ { printf "%s=%d ", tolower(substr($1, 1, length($1) - 1)), $2 }' /proc/meminfo
}
# Seconds to read every file under $FILES once (to /dev/null).
read_files() {
	t0=$(uptime_s)
	find $FILES -xdev -type f -print0 | xargs -0 cat >/dev/null 2>&1
	echo "$t0 $(uptime_s)" | awk '{ printf "%.2f", $2 - $1 }'
}
# The fill's process answers SIGUSR1 with its check (workload.py).
fill_check() {
	rm -f $FILL/workload.check
	kill -USR1 "$(cat $FILL/pid)"
	wait_for "test -s $FILL/workload.check" 60 && cat $FILL/workload.check
}

# The swsusp disk's swap area (kexechib.lab.swap); kexechibd's has none.
SWAP=$(cmdline_value kexechib.lab.swap)
if [ -n "$SWAP" ]; then
	swapon "$SWAP" || { say "h-error=swapon"; exit 1; }
fi
python3 /usr/lib/kexechib-lab/workload.py --dir $FILL --anon-mib "${ANON:-0}" \
	--random-mib "${RANDOM_MIB:-8}" >/dev/null 2>&1 &
wait_for "test -s $FILL/pid" 600 || { say "h-error=fill"; exit 1; }
sync
echo 3 >/proc/sys/vm/drop_caches
say "h-fill cold_read=$(read_files)"
say "h-before warm_read=$(read_files) $(meminfo)"
say "h-can logind=$(busctl call org.freedesktop.login1 /org/freedesktop/login1 \
	org.freedesktop.login1.Manager CanHibernate | cut -d'"' -f2)"

SIGNALS=/run/kexechib-lab-prepare-for-sleep.log
watch_sleep_signals $SIGNALS
say "h-request"
busctl call org.freedesktop.login1 /org/freedesktop/login1 \
	org.freedesktop.login1.Manager Hibernate b false
status=$?
if [ $status -eq 0 ]; then
	wait_for "sleep_signals $SIGNALS | grep -q false" 900 || status=124
fi
say "h-back status=$status signals=$(sleep_signals $SIGNALS)"
say "h-running $(fill_check)"
# What is in memory after the resume, before the files are read again.
after=$(meminfo)
say "h-after reread=$(read_files) $after"
SCRATCH=$(cmdline_value kexechib.lab.scratch)
LIMIT=$(cmdline_value kexechib.lab.limit_mib)
dd_rate() { dd "$@" bs=1M count="$LIMIT" 2>&1 | sed -n 's/.* copied, \([0-9.]*\) s, .*/\1/p' |
	awk -v mib="$LIMIT" '{ printf "%.1f", mib * 1.048576 / $1 }'; }
say "h-limit write_mb_s=$(dd_rate if=/dev/zero of="$SCRATCH" oflag=direct)" \
	"read_mb_s=$(dd_rate if="$SCRATCH" of=/dev/null iflag=direct)"
exit $status
