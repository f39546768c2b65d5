# docker route to the chemomech stack: Debian sid with the same package lists as the
# debootstrap root (env/debian-packages.txt, env/pip-requirements.txt).
#   docker build -t chemomech . && docker run --rm -v "$PWD":/work -w /work chemomech make test
FROM debian:sid
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 MPLBACKEND=Agg \
    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
COPY env/debian-packages.txt env/pip-requirements.txt /tmp/env/
RUN apt-get -o Acquire::Check-Valid-Until=false update \
 && grep -v '^\s*#' /tmp/env/debian-packages.txt | xargs apt-get install -y --no-install-recommends make \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv --system-site-packages /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir -r /tmp/env/pip-requirements.txt
ENV PATH=/opt/venv/bin:$PATH
COPY . /opt/chemomech
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e /opt/chemomech
WORKDIR /opt/chemomech
