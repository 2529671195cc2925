"""OCI spec -> Request -> (privilege, config) -> accepted ids -> resolved devices -> Plan.

Pure: every function here takes what it needs as arguments and does no I/O. The host facts and the
inventory come in as data (facts.py, gpuhook/inventory/model.py); tests/unit/decide/
test_purity.py reads the imports so that this stays true."""
