# Kernel A of the lab's daemon test (tests/lab/test_daemon.py) and bench
# (bench/lab_kexec.py): kexechibd jumps A -> B -> A three times over D-Bus.
#
# A keeps a tmpfs file and a counting process; then, with busctl:
# Hibernate {mode: checkpoint} (B saves A to the image device, /dev/vda, and
# jumps back), JumpBack, JumpBack. After every return A checks its file, its
# process and the daemon's state; after the first it asks the daemon to
# Inspect the image B committed.
. /usr/lib/kexechib-lab/lab.sh

start_bus
start_daemon

dd if=/dev/urandom of=/tmp/canary bs=4096 count=256 2>/dev/null
want=$(md5sum </tmp/canary)
(n=0; while :; do n=$((n + 1)); echo $n >/tmp/counter; sleep 0.1; done) &
counter=$!
state() {
	if [ "$(md5sum </tmp/canary)" = "$want" ]; then canary=intact; else canary=changed; fi
	before=$(cat /tmp/counter)
	sleep 0.5
	after=$(cat /tmp/counter)
	if kill -0 $counter && [ "$after" -gt "$before" ]; then count=running; else count=stopped; fi
	echo "canary=$canary counter=$count daemon=$(bus_property State)"
}
manager() {
	busctl --timeout=900 call $LAB_BUS $LAB_PATH $LAB_IFACE "$@"
}
say "a-state round=0 $(state)"

# a-back marks the return (the harness times markers); a-state follows.
say "a-hibernate"
manager Hibernate 'a{sv}' 1 mode s checkpoint ||
	{ say "a-error=hibernate"; exit 1; }
say "a-back round=1"
say "a-state round=1 $(state)"
say "a-image $(inspect_image /dev/vda)"
for round in 2 3; do
	say "a-jump round=$round"
	manager JumpBack || { say "a-error=jump-back"; exit 1; }
	say "a-back round=$round"
	say "a-state round=$round $(state)"
done
