#!/bin/sh
# Debian packages the HPC modules' tests, the alert tests and the demo need (tesseract for OCR, a TrueType font
# for the synthetic labels) and systemd (`systemd-analyze` checks the unit). Idempotent:
# installs only what is missing. Without root or apt it says so and exits 0: the tests that
# need these packages then skip with their reason.
set -eu
# tesseract-ocr-dan/-eng/-lat: the OCR module's default languages; fonts-urw-base35 (Z003, a
# chancery hand), fonts-liberation and fonts-freefont-ttf: the varied synthetic labels.
PACKAGES="tesseract-ocr tesseract-ocr-dan tesseract-ocr-eng tesseract-ocr-lat fonts-dejavu-core"
PACKAGES="$PACKAGES fonts-urw-base35 fonts-liberation fonts-freefont-ttf systemd"
# prometheus (promtool) and prometheus-alertmanager: the alert rules' tests and the end-to-end
# alert test run the real ones.
PACKAGES="$PACKAGES prometheus prometheus-alertmanager"

missing=""
for pkg in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing="$missing $pkg"
done
if [ -z "$missing" ]; then
    echo "system packages: all present ($PACKAGES)"
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "system packages: cannot install$missing (needs root and apt-get); tests that need them will skip"
    exit 0
fi
echo "system packages: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
echo "system packages: installed$missing"
