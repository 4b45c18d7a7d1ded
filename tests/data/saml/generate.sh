#!/usr/bin/env bash
# Regenerates the SAML test data. The assertions are signed by xmlsec1
# (Debian package `xmlsec1`, libxml2 + OpenSSL), an implementation
# independent of valet's verifier. Run from anywhere; needs openssl, xmlsec1.
set -euo pipefail
cd "$(dirname "$0")"

# The identity provider's key and certificate, and a stranger's.
openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 36500 \
  -keyout idp-key.pem -out idp-cert.pem -subj "/CN=valet test IdP" 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 36500 \
  -keyout other-key.pem -out other-cert.pem -subj "/CN=someone else" 2>/dev/null

sign() { # key cert in out
  xmlsec1 --sign --privkey-pem "$1,$2" \
    --id-attr:ID urn:oasis:names:tc:SAML:2.0:assertion:Assertion \
    --output "$4" "$3"
}

# A correctly signed assertion.
sign idp-key.pem idp-cert.pem assertion.template.xml assertion-signed.xml
# The same assertion signed by a key the IdP does not have.
sign other-key.pem other-cert.pem assertion.template.xml assertion-other-key.xml

# Sanity check with xmlsec1 itself.
xmlsec1 --verify --pubkey-cert-pem idp-cert.pem \
  --id-attr:ID urn:oasis:names:tc:SAML:2.0:assertion:Assertion assertion-signed.xml

# Independent c14n vectors: the exact bytes xmlsec1 digested (the assertion,
# canonicalized, without its Signature) and signed (the canonical SignedInfo).
xmlsec1 --verify --pubkey-cert-pem idp-cert.pem \
  --id-attr:ID urn:oasis:names:tc:SAML:2.0:assertion:Assertion \
  --store-references --store-signatures --print-debug assertion-signed.xml > debug.txt 2>&1
python3 - <<'PY'
import re
t = open("debug.txt", "rb").read()
for name, out in [("PreDigest", "assertion-signed.predigest"), ("PreSigned", "assertion-signed.presigned")]:
    m = re.search(rb"== " + name.encode() + rb" data - start buffer:\n(.*?)\n== " + name.encode() + rb" data - end buffer", t, re.S)
    open(out, "wb").write(m.group(1))
PY

# Assertions for the SAML bearer grant tests: valid until 2099, plus one
# variant per defect that only a signer can produce.
variant() { # out id issuer nameid notonorafter audience recipient [key cert]
  sed -e "s|@ID@|$2|g" -e "s|@ISSUER@|$3|" -e "s|@NAMEID@|$4|" -e "s|@NOTONORAFTER@|$5|g" \
      -e "s|@AUDIENCE@|$6|" -e "s|@RECIPIENT@|$7|" grant.template.xml > variant.tmp.xml
  sign "${8:-idp-key.pem}" "${9:-idp-cert.pem}" variant.tmp.xml "$1"
  rm -f variant.tmp.xml
}
IDP=https://idp.test; AUD=https://valet.test; RCPT=https://valet.test/oauth2/token; LATER=2099-01-01T00:00:00Z
variant grant-valid.xml _grant-valid $IDP dave@idp.test $LATER $AUD $RCPT
variant grant-valid-2.xml _grant-valid-2 $IDP dave@idp.test $LATER $AUD $RCPT
variant grant-expired.xml _grant-expired $IDP dave@idp.test 2026-01-01T00:05:00Z $AUD $RCPT
variant grant-wrong-audience.xml _grant-aud $IDP dave@idp.test $LATER https://other.test $RCPT
variant grant-wrong-recipient.xml _grant-rcpt $IDP dave@idp.test $LATER $AUD https://other.test/oauth2/token
variant grant-wrong-issuer.xml _grant-iss https://evil-idp.test dave@idp.test $LATER $AUD $RCPT
variant grant-other-key.xml _grant-key $IDP dave@idp.test $LATER $AUD $RCPT other-key.pem other-cert.pem
# A comment inside NameID: exclusive c14n drops it, so the signature holds;
# a reader that takes NameID's first text node would see "admin@idp.test".
variant grant-comment-nameid.xml _grant-comment $IDP 'admin@idp.test<!---->.evil.test' $LATER $AUD $RCPT
rm -f debug.txt idp-key.pem other-key.pem
