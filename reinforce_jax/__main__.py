import sys

from reinforce_jax.cli import main

sys.exit(main())
