# Tests of the goxelpool command-line tool (included by the top Makefile): `make cli-test`, part
# of `make test`. Tests/cli/run.sh: every command, option, exit status and usage error against
# goxel-refd, make install and the man page; Tests/cli/test_watch.py: `watch` on a
# pseudo-terminal while the daemon is slowed down and crashed.
.PHONY: cli-test
cli-test: examples
	@rc=0; Tests/cli/run.sh $(STAGE) || rc=1; \
	GOXELPOOL_TOOL=$(STAGE)/bin/goxelpool GOXEL_REFD=$(STAGE)/bin/goxel-refd PYTHONDONTWRITEBYTECODE=1 \
	  python3 -m unittest discover -s Tests/cli -t Tests/cli -p 'test_*.py' -v || rc=1; \
	exit $$rc

test-extra: cli-test
