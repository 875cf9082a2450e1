#!/usr/bin/env bash
# Installs the Debian packages the test suite needs, only when they are missing:
# * PostgreSQL server binaries (initdb/pg_ctl) for the throwaway test cluster;
# * Orthanc with its DICOMweb and GDCM plugins for the PACS tests (tests/orthanc_server.py
#   starts its own Orthanc on a free loopback port with a config in a temp dir);
# * Chromium for the Playwright browser journeys (tests/e2e/; Playwright drives Debian's
#   browser, it downloads none), and an emoji font for its screenshots.
set -euo pipefail

need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
[ -x /usr/sbin/Orthanc ] || need+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
[ -e /usr/share/orthanc/plugins/libOrthancGdcm.so ] || need+=(orthanc-gdcm)
[ -x /usr/bin/chromium ] || need+=(chromium)
# The pages' emoji icons in the journeys' screenshots (headless Chromium has no emoji font).
[ -e /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || need+=(fonts-noto-color-emoji)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing system packages: ${need[*]} (run as root, or: sudo apt-get install ${need[*]})" >&2
  exit 1
fi
echo "installing system packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
# Debian packages start their service on install (orthanc on 8042). Tests never use it
# (their Orthanc has its own port and storage), but a service start that fails in a
# container without an init system must not fail the install: a policy-rc.d that says
# "not now" (exit 101) stops invoke-rc.d from starting anything during this install.
policy=/usr/sbin/policy-rc.d
added_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  added_policy=1
fi
cleanup() { if [ "$added_policy" -eq 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
