# Kernel A of the hibernate cycle in the Debian guest (kexechibd/lab/debian.py,
# run by kexechib-lab-probe.service as root once the system is running).
#
# The workload is the user service of the lingering user `lab`
# (kexechib-workload.service: counts in memory, writes a tmpfs file in
# /run/user/1000/kexechib, appends to ~lab/workload.log on the ext4 root).
# A hibernates the way desktops do: org.freedesktop.login1.Manager.Hibernate
# (false), while a listener records logind's PrepareForSleep signals and a
# system-sleep hook records its arguments. logind starts hibernate.target;
# the package's drop-in hands systemd-hibernate.service to kexechibd. B saves
# A into the prepared file's blocks and powers off; a second QEMU boots the
# same disk, whose initramfs (or kexechib-resume.service) resumes A: logind's
# job ends, PrepareForSleep(false) arrives here.
. /usr/lib/kexechib-lab/lab.sh

IMAGE=$(sed -n 's/^location *= *//p' /etc/kexechibd.conf)
SIZE=$(cmdline_value kexechib.lab.image_size)
: "${SIZE:=1800M}"
WORK=/run/user/1000/kexechib
LOG=/home/lab/workload.log

# Lingering starts the user's manager at boot; on loaded cores logind's call
# to start it can time out ("Failed to start user service 'user@1000.service',
# ignoring: Connection timed out"), so ask again (a no-op when it runs).
systemctl start user@1000.service
wait_for "test -s $WORK/pid" 300 || { say "a-error=workload"; exit 1; }
workload=$(cat $WORK/pid)

if [ ! -e "$IMAGE" ]; then
	# kexechibd.service's StateDirectory; it exists once the daemon ran.
	mkdir -p -m 0700 "$(dirname "$IMAGE")"
	t0=$(uptime_s)
	kexechibctl image create "$IMAGE" --size "$SIZE" || { say "a-error=image-create"; exit 1; }
	say "a-image-created seconds=$(echo "$(uptime_s) $t0" | awk '{ printf "%.1f", $1 - $2 }')"
fi

state() {
	rm -f $WORK/workload.check
	kill -USR1 "$workload"
	wait_for "test -s $WORK/workload.check" 30 || echo "workload=silent"
	echo "workload=$workload $(cat $WORK/workload.check) log_lines=$(wc -l <$LOG)" \
		"log_last=$(tail -n1 $LOG) root=$(findmnt -no OPTIONS / | cut -d, -f1)" \
		"cpus=$(cat /sys/devices/system/cpu/online)" \
		"kexec_loaded=$(cat /sys/kernel/kexec_loaded)"
}

# What systemd-sleep would run around the kernel's hibernation: the drop-in
# runs every hook with `pre hibernate` and `post hibernate`.
HOOK_LOG=/var/log/kexechib-lab-sleep-hook.log
cat > /usr/lib/systemd/system-sleep/kexechib-lab <<EOH
#!/bin/sh
echo "\$1 \$2 \$SYSTEMD_SLEEP_ACTION" >> $HOOK_LOG
EOH
chmod 0755 /usr/lib/systemd/system-sleep/kexechib-lab
SIGNALS=/run/kexechib-lab-prepare-for-sleep.log
watch_sleep_signals $SIGNALS

LOGIND="org.freedesktop.login1 /org/freedesktop/login1 org.freedesktop.login1.Manager"
say "a-can logind=$(busctl call $LOGIND CanHibernate | cut -d'"' -f2) kexechib=$(kexechibctl can-hibernate)"
say "a-ready $(state)"
say "a-secret needles=$(cat $WORK/needles)"
# What `kexechibctl status` says protects the image (docs/install.md).
sealed=no
kexechibctl status | grep -q "^Image at rest: *encrypted: $IMAGE is sealed" && sealed=yes
say "a-protection sealed=$sealed"
say "a-hibernate counter=$(cat $WORK/counter)"
# logind answers once hibernate.target's job is queued; A is back when the job
# has ended and logind says PrepareForSleep(false).
busctl call $LOGIND Hibernate b false
status=$?
signals() { sleep_signals $SIGNALS; }
if [ $status -eq 0 ]; then
	wait_for 'signals | grep -q false' 900 || status=124
fi
last_error=$(busctl get-property $LAB_BUS $LAB_PATH $LAB_IFACE LastError | cut -d'"' -f2)
say "a-back status=$status counter=$(cat $WORK/counter) signals=$(signals)" \
	"hooks=$(paste -sd, $HOOK_LOG | tr ' ' ':') last_error=${last_error:-none}"
sleep 1
say "a-state $(state)"
say "a-image $(inspect_image "$IMAGE")"
# The journal as A sees it (the host cannot read it on an encrypted root).
daemon_log=$(journalctl -b -o cat -u kexechibd.service)
say "a-journal resumed=$(echo "$daemon_log" | grep -c 'back in A: resumed from the image')" \
	"wiped=$(echo "$daemon_log" | grep -c 'image wiped: ')"
exit $status
