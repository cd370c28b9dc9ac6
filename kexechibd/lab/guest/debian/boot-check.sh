# What the Debian guest's boot test checks (tests/lab/test_debian.py): the
# services a desktop relies on, the machine's shape, the user's workload.
. /usr/lib/kexechib-lab/lab.sh

# logind starts the lingering user's manager at boot; under load its call can
# time out (then logind logs and goes on): ask again, a no-op when it runs.
systemctl start user@1000.service
as_lab() { runuser -u lab -- env XDG_RUNTIME_DIR=/run/user/1000 "$@"; }
say "deb-units logind=$(systemctl is-active systemd-logind) dbus=$(systemctl is-active dbus)" \
	"resume=$(systemctl is-enabled kexechib-resume.service)" \
	"workload=$(as_lab systemctl --user is-active kexechib-workload.service)"
say "deb-machine cpus=$(cat /sys/devices/system/cpu/online)" \
	"root=$(findmnt -no OPTIONS / | cut -d, -f1)" \
	"efi=$(test -d /sys/firmware/efi && echo yes || echo no)" \
	"acpi=$(test -d /sys/firmware/acpi/tables && echo yes || echo no)"
# The user service is active once Python runs; its first count comes after
# the interpreter's start (seconds under TCG on loaded cores).
wait_for "test -s /run/user/1000/kexechib/counter" 300
say "deb-workload counter=$(cat /run/user/1000/kexechib/counter 2>/dev/null)"
say "deb-can-hibernate $(busctl --json=short call org.freedesktop.login1 /org/freedesktop/login1 \
	org.freedesktop.login1.Manager CanHibernate)"
