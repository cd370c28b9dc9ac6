# Kernel C of the lab's hibernate cycle (tests/lab/test_cycle.py, make demo):
# a normal boot on the image disk that A's B wrote, doing what
# kexechib-resume.service does early in a real boot: `kexechibd --oneshot`.
# With a committed image of another boot, the daemon (role restorer) streams
# it into a staged load and jumps into A: nothing here runs after that, and
# the console shows A continuing. With no valid image it has nothing to do;
# a resume that fails discards what it loaded. Either way the boot goes on.
. /usr/lib/kexechib-lab/lab.sh

say "c-up uptime=$(uptime_s)"
kexechibd --oneshot
status=$?
say "c-boots-on status=$status kexec_loaded=$(cat /sys/kernel/kexec_loaded)" \
	"pgmap_bytes=$(wc -c </proc/kexec_pgmap)"
