# Kernel B of the lab's daemon tests: started by /init when A's kexechibd
# loaded this kernel with kexechib.lab.run=/usr/lib/kexechib-lab/saver.sh.
#
# B starts a system bus and kexechibd, which finds its role on the command line
# (kexechib.role=save, kexec_jump_back_entry=) and saves A at once.  In
# checkpoint mode the daemon then jumps back to A from inside the save; the
# save ends when A jumps to B again (JumpBack in A).  From then on this script
# is what a user of B would be: it asks B's daemon to JumpBack, and the call
# returns each time A jumps to B again.
. /usr/lib/kexechib-lab/lab.sh

say "b-up jbe=$(cmdline_value kexec_jump_back_entry) uptime=$(uptime_s)"
# bench.b_save: first the plain tool on the same input in this same kernel,
# `zstd -1 -T0 < /proc/vmcore`, written to kexechib.lab.zstd_to and synced
# (the host counts the bytes: the disk file's blocks), then the daemon's save
# as always.
ZSTD_TO=$(cmdline_value kexechib.lab.zstd_to)
if [ -n "$ZSTD_TO" ]; then
	say "b-zstd-start vmcore=$(stat -c %s /proc/vmcore) uptime=$(uptime_s)"
	zstd -1 -T0 -q -c </proc/vmcore | dd of="$ZSTD_TO" bs=1M iflag=fullblock conv=fsync 2>/dev/null
	say "b-zstd-end status=$? uptime=$(uptime_s)"
fi
start_bus
start_daemon
# The save has ended once the daemon is idle with progress 1 (success) or
# failed; a failed save has already jumped back to A, which reports it. In
# poweroff mode the daemon powers off as soon as the image is committed.
# Meanwhile, the save's progress every 10 %.
shown=-1
while :; do
	state=$(bus_property State)
	progress=$(bus_property Progress)
	[ "$state" = failed ] && break
	[ "$state" = idle ] && [ "$progress" = 1 ] && break
	if [ "$state" = saving ]; then
		decile=$(echo "$progress" | awk '{ printf "%d", $1 * 10 + 1e-9 }')
		if [ "$decile" -gt "$shown" ]; then
			shown=$decile
			say "save-progress percent=$((decile * 10))"
		fi
	fi
	sleep 0.5
done
peak=$(sed -n 's/^VmHWM:[[:space:]]*\([0-9]*\) kB/\1/p' /proc/$LAB_DAEMON/status)
say "b-saved state=$state daemon_peak_kib=$peak"
[ "$state" = idle ] || exit 1
round=1
while :; do
	say "b-jump round=$round"
	bus_call JumpBack >/dev/null || { say "b-error=jump-back"; exit 1; }
	round=$((round + 1))
	say "b-back round=$round"
done
