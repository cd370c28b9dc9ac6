# Kernel B of the lab bench (bench/lab_kexec.py): jump back to A at once,
# with the tool named by kexechib.lab.tool= (kexec-tools or kexechibd), and
# again every time A jumps to B.
. /usr/lib/kexechib-lab/lab.sh

jbe=$(cmdline_value kexec_jump_back_entry)
tool=$(cmdline_value kexechib.lab.tool)
say "b-up tool=$tool jbe=$jbe uptime=$(uptime_s)"
case $tool in
kexec-tools)
	kexec --load-jump-back-helper --entry="$jbe" || { say "b-error=helper"; exit 1; }
	round=1
	while :; do
		say "b-jump round=$round"
		# kexec -e returns (status 1, "kexec failed") when A jumps to B again.
		kexec -e
		round=$((round + 1))
		say "b-back round=$round"
	done
	;;
kexechibd)
	exec python3 /usr/lib/kexechib-lab/jumpback.py
	;;
*)
	say "b-error=unknown-tool-$tool"
	exit 1
	;;
esac
