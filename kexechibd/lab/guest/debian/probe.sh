#!/bin/sh
# The lab probe in the Debian guest (kexechib-lab-probe.service): the lab's
# markers as the lab's /init prints them (kexechibd/lab/qemu.py parses them),
# then the fw_cfg script as root, then a clean power-off.
. /usr/lib/kexechib-lab/lab.sh

say "init uptime=$(uptime_s) version=$(uname -v | cut -d' ' -f1)"
state=$(systemctl is-system-running --wait)
failed=$(systemctl list-units --state=failed --plain --no-legend | awk '{ print $1 }' | paste -sd, -)
say "system state=$state failed=${failed:-none} uptime=$(uptime_s)"
cp /sys/firmware/qemu_fw_cfg/by_name/opt/kexechib/run/raw /run/kexechib-lab-run.sh
say "run uptime=$(uptime_s)"
sh /run/kexechib-lab-run.sh
status=$?
say "exit status=$status uptime=$(uptime_s)"
if [ "$(cmdline_value kexechib.lab.poweroff)" != no ]; then
	systemctl poweroff
fi
