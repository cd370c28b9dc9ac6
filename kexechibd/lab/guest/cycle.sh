# Kernel A of the lab's hibernate cycle (tests/lab/test_cycle.py, make demo).
#
# A runs a system bus, kexechibd, a workload (kexechibd/lab/guest/workload.py:
# a counter in its memory, written to tmpfs, and a buffer it knows the digest
# of), a 1 MiB tmpfs file and a bus monitor (PrepareForHibernate, and every
# error reply), then hibernates with busctl, as a user would:
#
#   kexechib.lab.cycle=poweroff    Hibernate 'a{sv}' 0 (the configuration's
#                                  mode: poweroff). B saves A and powers off;
#                                  QEMU ends. A later QEMU boots C on the same
#                                  disk (resume.sh), which resumes A: the call
#                                  returns here, on the second QEMU's console.
#   kexechib.lab.cycle=checkpoint  Hibernate {mode: checkpoint}: B saves A and
#                                  jumps back; A notes that it ran on after the
#                                  checkpoint and powers off. A later C resumes
#                                  the checkpoint: the call returns once more.
#   kexechib.lab.cycle=cancel      Hibernate, and Cancel while it prepares.
#
# kexechib.lab.client=kexechibctl hibernates with `kexechibctl hibernate --direct`
# instead (no logind in this guest: --direct; its progress lines are on
# the console; make demo uses it).
. /usr/lib/kexechib-lab/lab.sh

cycle=$(cmdline_value kexechib.lab.cycle)
client=$(cmdline_value kexechib.lab.client)
: "${cycle:=poweroff}" "${client:=busctl}"

start_bus
start_daemon
busctl monitor --json=short --match="type='error'" \
	--match="type='signal',interface='$LAB_IFACE',member='PrepareForHibernate'" \
	>/tmp/bus.log 2>/tmp/bus.err &
wait_for 'grep -q Monitoring /tmp/bus.log /tmp/bus.err' 30 || { say "a-error=monitor"; exit 1; }

dd if=/dev/urandom of=/tmp/canary bs=4096 count=256 2>/dev/null
want=$(md5sum </tmp/canary)
# kexechib.lab.anon_mib and .random_mib: more memory for the workload to hold
# (bench.b_save's fill); 8 MiB of random bytes by default.
anon=$(cmdline_value kexechib.lab.anon_mib)
random_mib=$(cmdline_value kexechib.lab.random_mib)
python3 /usr/lib/kexechib-lab/workload.py --anon-mib "${anon:-0}" --random-mib "${random_mib:-8}" &
workload=$!
wait_for 'test -s /tmp/counter' 60 || { say "a-error=workload"; exit 1; }

# What must survive: the tmpfs file, the workload (the same process, its
# memory, still counting), the daemon (idle), and no kexec image left loaded.
state() {
	local canary
	if [ "$(md5sum </tmp/canary)" = "$want" ]; then canary=intact; else canary=changed; fi
	rm -f /tmp/workload.check
	kill -USR1 $workload
	wait_for 'test -s /tmp/workload.check' 30 || echo "workload=silent"
	check=$(cat /tmp/workload.check)
	sleep 0.5
	echo "canary=$canary workload=$workload $check later=$(cat /tmp/counter)" \
		"daemon=$(bus_property State) kexec_loaded=$(cat /sys/kernel/kexec_loaded)" \
		"pgmap_bytes=$(wc -c </proc/kexec_pgmap)"
}
manager() {
	busctl --timeout=900 call $LAB_BUS $LAB_PATH $LAB_IFACE "$@"
}
hibernate() {
	if [ "$client" = kexechibctl ]; then
		# Through a pipe: its progress as lines (on a terminal, a bar that
		# redraws itself, which a serial log shows as one line at the end).
		{
			kexechibctl hibernate --direct --mode "$cycle"
			echo $? >/tmp/hibernate.status
		} | cat
		return "$(cat /tmp/hibernate.status)"
	elif [ "$cycle" = poweroff ]; then
		manager Hibernate 'a{sv}' 0
	else
		manager Hibernate 'a{sv}' 1 mode s "$cycle"
	fi
}
# The bus monitor's JSON lines so far, as records for the harness.
bus_log() {
	grep '^{' /tmp/bus.log | while read -r line; do say "a-bus $line"; done
}
image() { inspect_image "$IMAGE"; }
IMAGE=/dev/vda

say "a-ready $(state)"
if [ "$cycle" = cancel ]; then
	manager Hibernate 'a{sv}' 0 >/tmp/hibernate.out 2>&1 &
	call=$!
	wait_for 'case $(bus_property State) in preparing|loading) true ;; *) false ;; esac' 120 ||
		{ say "a-error=never-preparing"; exit 1; }
	at=$(bus_property State)
	manager Cancel
	cancelled=$?
	wait $call
	status=$?
	say "a-cancel state=$at cancel_status=$cancelled hibernate_status=$status"
	say "a-state $(state)"
	bus_log
	exit 0
fi

say "a-hibernate cycle=$cycle client=$client counter=$(cat /tmp/counter)"
hibernate
status=$?
say "a-back status=$status counter=$(cat /tmp/counter)"
say "a-state $(state)"
say "a-image $(image)"
bus_log
if [ "$cycle" = checkpoint ] && image | grep -q '"state":{"type":"s","data":"committed"}'; then
	# B saved a checkpoint and jumped back. What A does from here on is not
	# in the image: a later resume must not see this file.
	echo "after the checkpoint" >/tmp/after-checkpoint
	say "a-checkpointed"
	exit $status
fi
if [ -e /tmp/after-checkpoint ]; then after=yes; else after=no; fi
say "a-resumed after_checkpoint_file=$after"
exit $status
