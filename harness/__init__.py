"""Real processes for the integration tiers and the benchmark, one module per
kind of process: processes (ports, waiting, stopping), redis_server, service
(`cregistry serve`, the CLI, HTTP), mosquitto (with the plugin or go-auth),
mqtt (clients), sentinel (the failover tier). The tests and bench/ both import
from here; neither imports the other."""
