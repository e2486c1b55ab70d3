"""The device agent behind `cregistry device`, one noun a module:
agent (the loop), credentials and credential_file (what the device keeps
and where), rest and mqtt (the two ways it talks to the registry), tls,
backoff, logs."""
