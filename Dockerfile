# Container route to the chemomech stack: Debian sid with the same package lists as the
# debootstrap root (env/debian-packages.txt, env/pip-requirements.txt), pinned to one
# dated Debian snapshot (DEBIAN_DATE) so that a rebuild installs the same packages.
#
#   docker build --secret id=ca_bundle,src=/etc/ssl/certs/ca-certificates.crt -t chemomech .
#   docker run --rm -v "$PWD/../shared":/work/shared:ro chemomech make test
#
# The clone is at /work/chemomech in the image and the run command mounts the shared data
# at /work/shared, its ../shared, so the real-data tests run instead of skipping.
# The secret is optional: it gives pip (and apt) the CA bundle of an intercepting proxy.
# Without a registry (or without snapshot.debian.org) use `make container-test`, which
# builds the base image with debootstrap and runs the tests (scripts/container-test).
ARG DEBIAN_DATE=20261030
FROM debian:sid-${DEBIAN_DATE}
ARG DEBIAN_DATE
# The pin: every apt-get below reads the snapshot of DEBIAN_DATE, 00:00 UTC.
ARG DEBIAN_MIRROR=http://snapshot.debian.org/archive/debian/${DEBIAN_DATE}T000000Z
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 MPLBACKEND=Agg \
    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 \
    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY env/debian-packages.txt env/pip-requirements.txt /tmp/env/
RUN --mount=type=secret,id=ca_bundle \
    rm -f /etc/apt/sources.list.d/* \
 && echo "deb $DEBIAN_MIRROR sid main" > /etc/apt/sources.list \
 && if [ -s /run/secrets/ca_bundle ]; then \
      echo 'Acquire::https::CAInfo "/run/secrets/ca_bundle";' > /etc/apt/apt.conf.d/99ca; fi \
 && apt-get -o Acquire::Check-Valid-Until=false update \
 && grep -v '^\s*#' /tmp/env/debian-packages.txt | xargs apt-get install -y --no-install-recommends make \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /etc/apt/apt.conf.d/99ca
RUN --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
 && python3 -m venv --system-site-packages /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir -r /tmp/env/pip-requirements.txt
ENV PATH=/opt/venv/bin:$PATH
COPY . /work/chemomech
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e /work/chemomech \
 && { dpkg-query -W; pip freeze; } > /opt/versions.txt
LABEL org.opencontainers.image.title=chemomech org.chemomech.debian-date=${DEBIAN_DATE}
WORKDIR /work/chemomech
CMD ["make", "test"]
