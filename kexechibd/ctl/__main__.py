import sys

from kexechibd.ctl.main import main

sys.exit(main())
