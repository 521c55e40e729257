#!/usr/bin/env bash
# Make sure `prometheus`, `promtool` and `amtool` are on PATH for the tests; install Debian's packages if not.
#
# The tests start their own prometheus binary (temp config and storage, a free loopback port), so the system
# service must never run: the package is installed with a policy-rc.d that forbids starting services, and any
# service the package would start is left stopped.  Prints the versions; exits non-zero with the reason if it
# cannot provide both tools.
set -euo pipefail

have_all() { command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 && command -v amtool >/dev/null 2>&1; }

if ! have_all; then
    if [ "$(id -u)" != 0 ]; then
        echo "ensure-prometheus: prometheus/promtool/amtool not found and not root: install Debian's packages" \
             "(sudo apt-get install -y --no-install-recommends prometheus prometheus-alertmanager) or put the binaries on PATH" >&2
        exit 1
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "ensure-prometheus: prometheus/promtool not found and no apt-get here: put both binaries (2.x) on PATH" >&2
        exit 1
    fi
    policy=/usr/sbin/policy-rc.d
    made_policy=""
    if [ ! -e "$policy" ]; then
        # forbid invoke-rc.d from starting the package's daemon during the install; removed again on exit
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod 755 "$policy"
        made_policy=1
    fi
    cleanup() { if [ -n "$made_policy" ]; then rm -f "$policy"; fi; }
    trap cleanup EXIT
    echo "ensure-prometheus: installing Debian's prometheus and prometheus-alertmanager packages (services not started)" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager >/dev/null; }; then
        echo "ensure-prometheus: apt-get install prometheus prometheus-alertmanager failed; install them by hand or put prometheus, promtool and amtool on PATH" >&2
        exit 1
    fi
    if ! have_all; then
        echo "ensure-prometheus: the packages installed but prometheus/promtool/amtool are still not on PATH" >&2
        exit 1
    fi
fi

prometheus --version 2>&1 | head -1
promtool --version 2>&1 | head -1
amtool --version 2>&1 | head -1
