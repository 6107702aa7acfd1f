#!/usr/bin/env bash
# Make sure the Debian/Ubuntu packages a target needs are installed.
#   scripts/system-deps.sh venv               python3 with the venv module
#   scripts/system-deps.sh test               + mosquitto and postgresql (tests start their own), chromium
# Installs with apt-get when running as root; otherwise says exactly what to run, and fails.
set -euo pipefail

want=("$@")
missing=()

need() {  # need <command or check> <debian package>
    local check=$1 package=$2
    if ! eval "$check" >/dev/null 2>&1; then
        missing+=("$package")
    fi
}

for target in "${want[@]}"; do
    case "$target" in
        venv)
            need "python3 -c 'import venv, ensurepip'" python3-venv
            ;;
        test)
            need "python3 -c 'import venv, ensurepip'" python3-venv
            need "command -v mosquitto || test -x /usr/sbin/mosquitto" mosquitto
            need "command -v chromium || test -x /usr/bin/chromium" chromium
            need "ls /usr/lib/postgresql/*/bin/initdb" postgresql
            ;;
        *)
            echo "system-deps: unknown target '$target'" >&2
            exit 2
            ;;
    esac
done

[[ ${#missing[@]} -eq 0 ]] && exit 0

# One package list, once: sorted and without repeats.
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)

if [[ $(id -u) -ne 0 ]]; then
    echo "Siaga needs these Debian/Ubuntu packages: ${missing[*]}" >&2
    echo "Install them with:  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    echo "then run the same make command again." >&2
    exit 1
fi

echo "Installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# policy-rc.d 101: do not start the Debian mosquitto service on port 1883; Siaga starts its own.
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get install -y -qq --no-install-recommends "${missing[@]}"
