# The `cyncsim bench` suites, one module each (NAME_suite.py), registered in common.SUITES;
# common.py is the scaffold they share, simkit.py and stats.py the simulator suites' tools,
# report.py turns a run's JSON into docs/performance.md.
