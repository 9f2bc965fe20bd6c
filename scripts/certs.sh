#!/usr/bin/env bash
# Certificates for the TLS-only deployment (docker-compose.tls.yml, docs/security.md "TLS-only mode"):
#
#   ca.pem / ca.key          a CA made for this deployment (keep ca.key offline once the certificates exist)
#   server.pem / server.key  RabbitMQ's and Redis's certificate: DNS rabbitmq, redis, localhost, IP 127.0.0.1
#   client.pem / client.key  the tradebus services' client certificate (both brokers ask for one)
#
# Usage: bash scripts/certs.sh [DIRECTORY]   (default ./certs; TRADEBUS_CERT_DAYS, default 825)
# Keys are written mode 0600; the compose overlay's `certs` service copies them into volumes owned by the
# users that read them. Existing files are never overwritten: remove the directory to make new ones.
set -euo pipefail

out="${1:-certs}"
days="${TRADEBUS_CERT_DAYS:-825}"
command -v openssl >/dev/null || { echo "certs.sh: openssl is required" >&2; exit 1; }
if [ -e "$out/ca.pem" ]; then
  echo "certs.sh: $out/ca.pem exists; remove $out to make new certificates" >&2
  exit 1
fi
mkdir -p "$out"
umask 077
cd "$out"

openssl req -x509 -newkey rsa:3072 -sha256 -nodes -days "$days" \
  -keyout ca.key -out ca.pem -subj "/CN=tradebus CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

sign() {  # sign NAME SUBJECT EXTENSIONS
  printf '%b' "$3" > "$1.ext"
  openssl req -newkey rsa:3072 -sha256 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
  openssl x509 -req -sha256 -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days "$days" \
    -out "$1.pem" -extfile "$1.ext" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}

sign server "/CN=rabbitmq" "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:rabbitmq,DNS:redis,DNS:localhost,IP:127.0.0.1\n"
sign client "/CN=tradebus" "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n"
rm -f ca.srl
chmod 0644 ca.pem server.pem client.pem
chmod 0600 ca.key server.key client.key
openssl verify -CAfile ca.pem server.pem client.pem
