#!/usr/bin/env bash
# Installs Debian's Chromium, which the dashboard's browser test drives through
# playwright-core, when /usr/bin/chromium is missing.
#
# Usage: infra/chromium.sh
#
# As root it runs `apt-get update` and `apt-get install -y chromium chromium-driver` (about
# 400 MB installed, one to three minutes). As another user it prints the command to run as
# root and exits 0, so the rest of the stack still starts; the browser test then fails,
# naming the missing binary. infra/stack.sh install and start call this script.
set -euo pipefail

# shellcheck source=infra/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CHROMIUM=/usr/bin/chromium
PACKAGES=(chromium chromium-driver)

main() {
    [[ $# -eq 0 ]] || {
        sed -n '5p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
        exit 2
    }
    if [[ -x $CHROMIUM ]]; then
        return 0
    fi
    if ((EUID != 0)); then
        log "warning: $CHROMIUM is missing, and the dashboard's browser test needs it;" \
            "install it as root with: apt-get update && apt-get install -y ${PACKAGES[*]}"
        return 0
    fi
    command -v apt-get >/dev/null ||
        die "$CHROMIUM is missing and apt-get is not available; install Chromium some other way"

    mkdir -p "$LOG_DIR"
    local install_log=$LOG_DIR/chromium-install.log
    log "installing ${PACKAGES[*]} with apt-get (one to three minutes); log: $(display_path "$install_log")"
    if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "${PACKAGES[@]}"; } \
        >"$install_log" 2>&1; then
        tail -n 30 "$install_log" >&2
        die "apt-get install ${PACKAGES[*]} failed; see $(display_path "$install_log")"
    fi
    [[ -x $CHROMIUM ]] || die "apt-get installed ${PACKAGES[*]}, but $CHROMIUM is still missing"
    log "installed $("$CHROMIUM" --version 2>/dev/null || echo chromium)"
}

main "$@"
