# Redis from Debian packages only: bookworm's redis-server (7.0). deploy/offline/prepare-images.sh
# builds it for compose.yaml's redis service where redis:7 cannot be pulled. Like the official
# image, it runs as the unprivileged `redis` user with its data in /data (compose mounts a volume
# there; a new volume takes this directory's owner).
ARG DEBIAN_IMAGE=debian:bookworm-slim
FROM ${DEBIAN_IMAGE}
# The `redis` user first, with the official image's ids (999:999), so manifests written for that
# image (runAsUser, fsGroup) fit this one; the package keeps an existing user.
RUN groupadd --system --gid 999 redis \
 && useradd --system --uid 999 --gid redis --home-dir /var/lib/redis --shell /usr/sbin/nologin redis \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && install -d -o redis -g redis -m 0750 /data
LABEL org.opencontainers.image.title="redis 7 (Debian bookworm packages)" \
      org.opencontainers.image.base.name="${DEBIAN_IMAGE}"
USER redis
WORKDIR /data
VOLUME /data
EXPOSE 6379
# Debian's /etc/redis/redis.conf binds to loopback and daemonizes: start without it, in the
# foreground, listening on every interface of the container (compose passes its own flags).
CMD ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--dir", "/data"]
