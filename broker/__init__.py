"""The MQTT broker side of Siaga (imported as `siaga.broker`).

- `config`: the Mosquitto configuration template, the ACL, and re-exports of the password helpers
- `passwd`: Mosquitto 2.0 password files without the `mosquitto_passwd` binary
- `process`: `MosquittoProcess`, a real Mosquitto in a child process (tests, benchmarks, development)
- `certs`: the private CA and the broker's TLS certificate (`openssl` command line)
- `embedded`: an in-process amqtt broker for the demo when Mosquitto is not installed (demo only)
"""
