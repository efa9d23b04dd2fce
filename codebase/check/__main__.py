import sys

from codebase.check.runner import main

sys.exit(main())
