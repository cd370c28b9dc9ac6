# Shell functions for lab guest scripts (sourced; busybox sh).  In the guest
# this file is /usr/lib/kexechib-lab/lab.sh; see kexechibd/lab/userspace.py.

LAB_BUS=org.kexechib1
LAB_PATH=/org/kexechib1
LAB_IFACE=org.kexechib1.Manager

# A marker line the harness parses (kexechibd.lab.Marker).
say() { echo "KEXECHIB-LAB $*"; }

# The value of NAME= on the kernel command line (the last one), or nothing.
cmdline_value() {
	local arg value=
	for arg in $(cat /proc/cmdline); do
		case $arg in "$1"=*) value=${arg#*=} ;; esac
	done
	echo "$value"
}

# Seconds since boot, for log lines (the harness times markers itself).
uptime_s() { cut -d' ' -f1 /proc/uptime; }

# Wait up to $2 seconds (default 60) for command $1 (a shell snippet) to succeed.
wait_for() {
	local tries=$((${2:-60} * 10))
	while [ $tries -gt 0 ]; do
		eval "$1" >/dev/null 2>&1 && return 0
		tries=$((tries - 1))
		sleep 0.1
	done
	return 1
}

# The system bus: a real dbus-daemon with the lab's system.conf, which
# includes kexechibd's own policy file (/usr/share/dbus-1/system.d).
start_bus() {
	mkdir -p /run/dbus
	dbus-daemon --system --fork --nopidfile || { say "error=dbus-daemon"; exit 1; }
	wait_for "test -S /run/dbus/system_bus_socket" 30 || { say "error=bus-socket"; exit 1; }
}

# A D-Bus call to the daemon with dbus-send (no reply timeout: Hibernate and
# JumpBack reply only after the other kernel jumped back).
bus_call() {
	local method=$1
	shift
	dbus-send --system --print-reply --reply-timeout=2147483647 --dest=$LAB_BUS \
		$LAB_PATH "$LAB_IFACE.$method" "$@"
}

# A property of the daemon, e.g. `bus_property State` prints idle.
bus_property() {
	dbus-send --system --print-reply=literal --dest=$LAB_BUS $LAB_PATH \
		org.freedesktop.DBus.Properties.Get string:$LAB_IFACE string:"$1" |
		sed -e 's/^ *variant *//' -e 's/^[a-z0-9]* //' -e 's/"//g'
}

# The daemon's Inspect of the image at $1 as JSON (busctl --json=short): the
# reply, or {"error": "..."} when there is none, e.g. after A wiped it.
inspect_image() {
	busctl --json=short call $LAB_BUS $LAB_PATH $LAB_IFACE Inspect s "$1" 2>/tmp/inspect.err ||
		printf '{"error":"%s"}\n' "$(tr -d '"\\' </tmp/inspect.err | tr '\n' ' ')"
}

# kexechibd in the background, logging to the console; returns once it owns
# its bus name.  Extra arguments go to kexechibd.
start_daemon() {
	kexechibd "$@" &
	LAB_DAEMON=$!
	wait_for "dbus-send --system --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus \
		org.freedesktop.DBus.NameHasOwner string:$LAB_BUS | grep -q 'boolean true'" 120 ||
		{ say "error=daemon-start"; exit 1; }
	say "daemon-up pid=$LAB_DAEMON uptime=$(uptime_s)"
}

# logind's PrepareForSleep signals, recorded from now on in file $1
# (`watch_sleep_signals FILE`); `sleep_signals FILE` prints what came so far,
# e.g. "true,false": a hibernation's job has ended once "false" is there.
watch_sleep_signals() {
	dbus-monitor --system "type='signal',sender='org.freedesktop.login1',interface='org.freedesktop.login1.Manager',member='PrepareForSleep'" \
		>"$1" 2>&1 &
	sleep 2
}
sleep_signals() { grep -o 'boolean [a-z]*' "$1" | cut -d' ' -f2 | paste -sd, -; }
