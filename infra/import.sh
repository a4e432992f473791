#!/usr/bin/env bash
# Imports an AIS CSV file into the running Meridian services with the release importer.
#
# Usage: infra/import.sh FILE [IMPORTER_FLAGS...]
#
# The services must be running (`make up`). The importer logs in as the admin account that
# infra/services.sh set up (MERIDIAN_ADMIN_EMAIL, password in MERIDIAN_ADMIN_PASSWORD_FILE,
# default .stack/keys/admin-password), unless MERIDIAN_IMPORTER_EMAIL and
# MERIDIAN_IMPORTER_PASSWORD_FILE, or --email and --password-file, name another account. It
# returns once the query service shows every vessel's last report. Flags after FILE go to
# meridian-import unchanged.
set -euo pipefail

# shellcheck source=infra/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

main() {
    if (($# < 1)) || [[ -z $1 ]]; then
        die "missing the file to import. Usage: infra/import.sh FILE, or make import FILE=FILE"
    fi
    local file=$1
    shift
    [[ -f $file && -r $file ]] || die "cannot read the file '$file'"

    local importer=$TARGET_DIR/release/meridian-import
    [[ -x $importer ]] || die "missing $(display_path "$importer"). Build it with" \
        "cargo build --release -p meridian-importer (make up builds it)"

    local address
    for address in "$COMMAND_ADDR" "$QUERY_ADDR"; do
        http_ok "http://$address/healthz" ||
            die "Meridian is not running: GET http://$address/healthz failed. Start it with make up."
    done

    # Through the environment, so that --email and --password-file among the flags win.
    export MERIDIAN_IMPORTER_EMAIL=${MERIDIAN_IMPORTER_EMAIL:-$ADMIN_EMAIL}
    export MERIDIAN_IMPORTER_PASSWORD_FILE=${MERIDIAN_IMPORTER_PASSWORD_FILE:-$ADMIN_PASSWORD_FILE}
    [[ -r $MERIDIAN_IMPORTER_PASSWORD_FILE ]] ||
        die "cannot read the password file $(display_path "$MERIDIAN_IMPORTER_PASSWORD_FILE")" \
            "of $MERIDIAN_IMPORTER_EMAIL; make up creates it"

    exec "$importer" "$file" --command-url "http://$COMMAND_ADDR" \
        --query-url "http://$QUERY_ADDR" "$@"
}

main "$@"
