#!/usr/bin/env bash
# tls-check.sh REFD TLS_BINARY DNS_BINARY: the TLS and DNS endpoint tests (make tls-check).
#
# Makes throwaway certificates with the openssl command (a CA both sides trust; a server
# certificate for localhost, 127.0.0.1 and secure.test; a client certificate; and an untrusted
# "rogue" CA with a client and a server certificate of its own), then runs
#   TLS_BINARY (Tests/tls/tls.c): goxel-refd behind stunnel, client certificates required (and
#     behind socat, a terminator that cannot resume TLS sessions);
#   DNS_BINARY (Tests/tls/dns.c) under `unshare --mount`, where it bind-mounts hosts files of its
#     own over /etc/hosts (prints SKIP where a private mount namespace is not allowed).
# Each prints PASS/FAIL lines and "N passed, N failed"; the exit status is non-zero on a failure.
# Without stunnel4 or openssl: SKIP, except under CI=true (CI installs them and socat: .ci/run).
set -u
refd=$(readlink -f "$1"); tls=$(readlink -f "$2"); dns=$(readlink -f "$3")
stunnel=$(command -v stunnel4 || command -v stunnel || true)
for tool in openssl "$stunnel"; do
    if [ -z "$tool" ] || ! command -v "$tool" >/dev/null 2>&1; then
        msg="tls-check: stunnel4 and openssl are needed (apt-get install stunnel4 openssl)"
        if [ "${CI:-}" = true ]; then echo "FAIL $msg"; exit 1; fi
        echo "SKIP $msg"; exit 0
    fi
done
work=$(mktemp -d "${TMPDIR:-/tmp}/gxp-tls.$$.XXXXXX")
trap 'rm -rf "$work"' EXIT
certs=$work/certs
mkdir -p "$certs" "$work/tls" "$work/dns"

# make_cert NAME ISSUER SUBJECT [EXTENSIONS]: NAME.key and NAME.pem signed by ISSUER (a CA's
# name, or "self" for a CA).
make_cert() {
    local name=$1 issuer=$2 subject=$3 ext=${4:-}
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$certs/$name.key" \
        -subj "$subject" -out "$certs/$name.csr" 2>/dev/null || return 1
    if [ "$issuer" = self ]; then
        printf 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n' > "$certs/$name.ext"
        openssl x509 -req -in "$certs/$name.csr" -signkey "$certs/$name.key" -days 2 \
            -extfile "$certs/$name.ext" -out "$certs/$name.pem" 2>/dev/null
    else
        printf '%s\n' "$ext" > "$certs/$name.ext"
        openssl x509 -req -in "$certs/$name.csr" -CA "$certs/$issuer.pem" -CAkey "$certs/$issuer.key" \
            -CAcreateserial -days 2 -extfile "$certs/$name.ext" -out "$certs/$name.pem" 2>/dev/null
    fi
}
server_ext='subjectAltName=DNS:localhost,IP:127.0.0.1,DNS:secure.test
extendedKeyUsage=serverAuth'
client_ext='extendedKeyUsage=clientAuth'
if ! { make_cert ca self "/CN=goxelpool test CA" &&
       make_cert server ca "/CN=localhost" "$server_ext" &&
       make_cert client ca "/CN=goxelpool test client" "$client_ext" &&
       make_cert rogue-ca self "/CN=rogue CA" &&
       make_cert rogue-client rogue-ca "/CN=rogue client" "$client_ext" &&
       make_cert rogue-server rogue-ca "/CN=localhost" "$server_ext"; }; then
    echo "FAIL tls-check: openssl could not make the test certificates"
    exit 1
fi
echo "# certificates by $(openssl version); $("$stunnel" -version 2>&1 | grep -m1 -o "stunnel [0-9.]*")"

rc=0
"$tls" "$refd" "$stunnel" "$certs" "$work/tls" "$(command -v socat || true)" || rc=1

if unshare --mount true 2>/dev/null; then
    unshare --mount "$dns" "$refd" "$stunnel" "$certs" "$work/dns" || rc=1
else
    echo "SKIP dns-check: a private mount namespace is not allowed here (unshare --mount needs root or user namespaces)"
fi
exit $rc
