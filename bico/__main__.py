from bico.cli import main
import sys
sys.exit(main())
