"""The process on its machine: the server, systemd notification, doctor, the systemd unit."""
