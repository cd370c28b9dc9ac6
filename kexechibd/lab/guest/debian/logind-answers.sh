# What logind answers with kexechibd installed, in the Debian guest
# (tests/lab/test_logind_guest.py): its CanHibernate and CanHybridSleep from our
# sleep.conf drop-ins, while kexechibd would refuse, and its refusal under
# another user's block inhibitor. Runs after boot-check.sh in the same boot
# (tests/lab/conftest.py's debian_booted).
LOGIND="org.freedesktop.login1 /org/freedesktop/login1 org.freedesktop.login1.Manager"
. /usr/lib/kexechib-lab/lab.sh
answer() { busctl call $LOGIND "$1" | cut -d'"' -f2; }
# Started here, not by the first call's bus activation: under TCG on loaded
# cores the daemon's start can outlast dbus-daemon's 25 s activation timeout
# (its unit's start timeout is 90 s).
systemctl start kexechibd.service
f=/run/systemd/sleep.conf.d/10-kexechib.conf
say "deb-verdict file=$(test -f $f && echo yes || echo no)" \
	"allow=$(sed -n 's/^AllowHibernation=//p' $f)" \
	"kexechib=$(kexechibctl can-hibernate)"
say "deb-can hibernate=$(answer CanHibernate) hybrid=$(answer CanHybridSleep)" \
	"s2h=$(answer CanSuspendThenHibernate)"
busctl call $LOGIND HybridSleep b false >/dev/null 2>/tmp/hybrid
say "deb-hybrid refused=$(grep -q 'Sleep verb "hybrid-sleep" not supported' /tmp/hybrid && echo yes || echo no)"
systemctl start hybrid-sleep.target 2>/dev/null
say "deb-hybrid-direct said=$(journalctl -b -u systemd-hybrid-sleep.service -o cat | grep -c 'hybrid-sleep is not supported with kexechibd')"

# kexechibd would refuse: an image on /run (tmpfs) is not where the next boot looks.
cp /etc/kexechibd.conf /tmp/conf.saved
sed -i 's|^location = .*|location = /run/kexechib-image|' /etc/kexechibd.conf
: > /run/kexechib-image
systemctl restart kexechibd.service
say "deb-refusing allow=$(sed -n 's/^AllowHibernation=//p' $f) logind=$(answer CanHibernate)" \
	"kexechib=$(kexechibctl can-hibernate)"
cp /tmp/conf.saved /etc/kexechibd.conf
systemctl restart kexechibd.service
say "deb-restored allow=$(sed -n 's/^AllowHibernation=//p' $f) logind=$(answer CanHibernate)"

# Another user's block inhibitor stops kexechibctl (HibernateWithFlags with
# SD_LOGIND_ROOT_CHECK_INHIBITORS), and nothing happens. (logind ignores the
# caller's own inhibitors: root's would not stop root.) The user has no
# active session here, only lingering, so polkit is told to let it inhibit,
# as it lets a desktop user's applications.
mkdir -p /etc/polkit-1/rules.d
cat >/etc/polkit-1/rules.d/50-kexechib-lab.rules <<'RULES'
polkit.addRule(function(action, subject) {
    if (action.id.indexOf("org.freedesktop.login1.inhibit-") == 0 && subject.user == "lab")
        return polkit.Result.YES;
});
RULES
sleep 2
runuser -u lab -- systemd-inhibit --what=sleep --mode=block --who=lab --why=test sleep 600 &
inhibitor=$!
sleep 2
kexechibctl --no-ask-password hibernate >/tmp/inhibited 2>&1
rc=$?
say "deb-inhibited rc=$rc" \
	"denied=$(grep -q 'Access denied to root due to active block inhibitor' /tmp/inhibited && echo yes || echo no)" \
	"started=$(journalctl -b -u kexechibd.service -o cat | grep -c 'hibernate started')"
kill $inhibitor
