# syntax=docker/dockerfile:1
#
# Moat container image: the broker and the pinned gocryptfs, nothing else.
#
#   docker build -t moat .
#   docker run -v ./mosquitto.conf:/mosquitto/config/mosquitto.conf:ro moat
#
# Paths follow the set-ups Moat replaces, so their bind mounts keep working:
#   /mosquitto/config/mosquitto.conf, /mosquitto/config/aclfile  (eclipse-mosquitto)
#   /mosquitto/conf/passwd, /secrets/cloudflare.ini, /mosquitto/log  (mosquitto-dns-certbot)
#
# User: Moat runs as uid/gid 1883, the uid of eclipse-mosquitto's "mosquitto"
# user, so data and config directories owned by it need no chown.
#
# Encrypted persistence (persistence_encryption gocryptfs) mounts a FUSE file
# system. As uid 1883 that works only through fusermount3, which is setuid
# root: the container then needs the device /dev/fuse, CAP_SYS_ADMIN in its
# bounding set (cap_add: SYS_ADMIN; the process itself runs without it), and
# on AppArmor hosts an unconfined profile, because docker-default denies
# mount. It must NOT run with no-new-privileges, which disables setuid.
# fusermount3 opens /dev/fuse as the calling user, so the device node must be
# mode 0666 (the kernel's default; check ls -l /dev/fuse on the host).
# It also mounts only where uid 1883 may write: with a read-only root, mount
# an empty tmpfs at /mosquitto/data (deploy/direct/compose.yaml does).
# Verified: uid 1883 with only CAP_SYS_ADMIN in its bounding set mounts and
# unmounts gocryptfs this way.
# Moat mounts for itself only (no -allow_other), so /etc/fuse.conf needs no
# user_allow_other, and the mount point /mosquitto/data (and its parent) is
# mode 0755: fusermount3 mounts as root without CAP_DAC_OVERRIDE (cap_drop
# ALL), which fails with "Permission denied" on a 0700 directory of uid 1883.
# A tmpfs mounted there takes that mode too. Without encrypted persistence none of this is needed:
# run with cap_drop ALL and no-new-privileges.

# ---- build -------------------------------------------------------------------
FROM golang:1.26.8-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# make's VERSION ?= takes this from the environment (there is no .git here).
ARG VERSION=dev
RUN make build

# ---- runtime -----------------------------------------------------------------
FROM debian:12.12-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates fuse3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 1883 moat \
 && useradd --system --uid 1883 --gid 1883 --home-dir /var/lib/moat --no-create-home --shell /usr/sbin/nologin moat \
 && install -d -o 1883 -g 1883 -m 0750 /mosquitto/config /mosquitto/conf /mosquitto/log /var/lib/moat \
 && install -d -o 1883 -g 1883 -m 0700 /mosquitto/encrypted /var/lib/moat/acme \
 && install -d -o 1883 -g 1883 -m 0755 /mosquitto /mosquitto/data \
 && install -d -m 0755 /secrets
COPY --from=build /src/bin/moat /src/bin/gocryptfs /usr/local/bin/

# config (read-only is fine), ACME state, gocryptfs cipher directory, logs.
# /mosquitto/data is no VOLUME: with persistence_encryption gocryptfs it is
# the mount point of the plaintext view, and Moat refuses to mount over a
# volume (compose files mount a volume there for plain persistence, or an
# empty tmpfs when the root is read-only).
VOLUME ["/mosquitto/config", "/var/lib/moat", "/mosquitto/encrypted", "/mosquitto/log"]

# 1883 MQTT (keep it on the container network), 8883 MQTT over TLS,
# 8083 MQTT over secure WebSocket, 9001 plain WebSocket origin for a
# Cloudflare Tunnel (never publish it). The admin listener stays on loopback.
EXPOSE 1883 8883 8083 9001

USER 1883:1883
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
  CMD ["moat", "health", "-c", "/mosquitto/config/mosquitto.conf"]
ENTRYPOINT ["moat"]
CMD ["serve", "-c", "/mosquitto/config/mosquitto.conf"]
