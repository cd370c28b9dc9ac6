# Kernel A of the hibernate cycle in the Debian guest (kexechibd/lab/debian.py,
# run by kexechib-lab-probe.service as root once the system is running).
#
# The workload is the user service of the lingering user `lab`
# (kexechib-workload.service: counts in memory, writes a tmpfs file in
# /run/user/1000/kexechib, appends to ~lab/workload.log on the ext4 root).
# A prepares the image file, then hibernates with busctl through kexechibd's
# own D-Bus API (Hibernate, the configuration's mode: poweroff). B saves A
# into the file's blocks and powers off; a second QEMU boots the same disk,
# where kexechib-resume.service resumes A: the call returns here.
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

say "a-ready $(state)"
say "a-hibernate counter=$(cat $WORK/counter)"
busctl --timeout=900 call $LAB_BUS $LAB_PATH $LAB_IFACE Hibernate 'a{sv}' 0
status=$?
say "a-back status=$status counter=$(cat $WORK/counter)"
sleep 1
say "a-state $(state)"
say "a-image $(busctl --json=short call $LAB_BUS $LAB_PATH $LAB_IFACE Inspect s "$IMAGE")"
exit $status
