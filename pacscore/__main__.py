import sys

from pacscore.cli import main

sys.exit(main())
