#!/bin/sh
# Emergency rotation from a CI job, keyless: the job's own OIDC token is exchanged for a Google
# access token (Workload Identity Federation), and `keyturn rotate POLICY --now --revoke` runs
# the rotation protocol against the store. No SSH to any node, no stored key.
#
# Called by emergency-rotation.yml (GitHub Actions); tests/identity.rs runs it against the
# emulator. Reads:
#   POLICY                         the policy to rotate (a file stem under the policies directory)
#   KEYTURN_CONFIG                 the agent file naming the store and the policies (keyturn.toml here)
#   WORKLOAD_IDENTITY_PROVIDER     projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER
#   SERVICE_ACCOUNT                the rotator's service account, impersonated (policies/iam/)
#   ACTIONS_ID_TOKEN_REQUEST_URL   set by GitHub for jobs with `permissions: id-token: write`
#   ACTIONS_ID_TOKEN_REQUEST_TOKEN
#   KEYTURN                        the keyturn binary (default: keyturn on PATH)
#   KEYTURN_STS_URL, KEYTURN_IAM_CREDENTIALS_URL
#                                  Google's endpoints, unless a private endpoint (or a test) says otherwise
#   RUNNER_TEMP                    where the credential configuration is written (default /tmp)
set -eu

: "${POLICY:?name the policy to rotate}"
: "${KEYTURN_CONFIG:?name the agent file}"
: "${WORKLOAD_IDENTITY_PROVIDER:?projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER}"
: "${SERVICE_ACCOUNT:?the rotator service account to impersonate}"
: "${ACTIONS_ID_TOKEN_REQUEST_URL:?the job needs permissions: id-token: write}"
: "${ACTIONS_ID_TOKEN_REQUEST_TOKEN:?the job needs permissions: id-token: write}"
sts="${KEYTURN_STS_URL:-https://sts.googleapis.com/v1/token}"
iam="${KEYTURN_IAM_CREDENTIALS_URL:-https://iamcredentials.googleapis.com}"

# Everything below lands in a JSON string: refuse what would need escaping.
for value in "$POLICY" "$WORKLOAD_IDENTITY_PROVIDER" "$SERVICE_ACCOUNT" "$ACTIONS_ID_TOKEN_REQUEST_URL" \
    "$ACTIONS_ID_TOKEN_REQUEST_TOKEN" "$sts" "$iam"; do
    case "$value" in
        *'"'* | *'\'* | *"
"*) echo "rotate.sh: a setting contains a quote, a backslash or a newline" >&2; exit 64 ;;
    esac
done

# The credential configuration (Google's external_account format): the subject token is the
# job's OIDC token, fetched from GitHub at every exchange with the job's request token, for the
# provider's audience. It holds the request token, so it is private to the job and removed after.
umask 077
credentials="${RUNNER_TEMP:-/tmp}/keyturn-gcp-credentials-$$.json"
trap 'rm -f "$credentials"' EXIT
cat > "$credentials" <<JSON
{
  "type": "external_account",
  "audience": "//iam.googleapis.com/$WORKLOAD_IDENTITY_PROVIDER",
  "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
  "token_url": "$sts",
  "credential_source": {
    "url": "$ACTIONS_ID_TOKEN_REQUEST_URL&audience=https://iam.googleapis.com/$WORKLOAD_IDENTITY_PROVIDER",
    "headers": { "Authorization": "Bearer $ACTIONS_ID_TOKEN_REQUEST_TOKEN" },
    "format": { "type": "json", "subject_token_field_name": "value" }
  },
  "service_account_impersonation_url": "$iam/v1/projects/-/serviceAccounts/$SERVICE_ACCOUNT:generateAccessToken",
  "service_account_impersonation": { "token_lifetime_seconds": 600 }
}
JSON

GOOGLE_APPLICATION_CREDENTIALS="$credentials" "${KEYTURN:-keyturn}" rotate "$POLICY" --now --revoke --config "$KEYTURN_CONFIG"
