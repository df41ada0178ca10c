"""Google's own Python client for Secret Manager, unmodified, against the emulator.

Every case is a call Google's client makes against a real project, with the outcome Google
gives: the same result, or the same exception class and `error.status`. A gap between the
emulator and Google's contract shows up here as a failed test rather than as a surprise on a
real project.

The client talks REST (`transport="rest"`), so it sends `$alt=json;enum-encoding=int` on every
call and authenticates with a self-signed JWT made from the service-account key (AIP-4111),
not through the token endpoint. Over REST, google-api-core picks the exception class from the
HTTP status alone: 400 is `BadRequest` whether the status is INVALID_ARGUMENT or
FAILED_PRECONDITION, 403 is `Forbidden` (not `PermissionDenied`) and 409 is `Conflict`. So each refusal is asserted by class *and* by the
`status` of the error body, which is what tells them apart.

The Workload Identity Federation cases use google-auth's own `identity_pool` credentials (an
`external_account` configuration with a file-sourced subject token) against the emulator's
STS and IAM Credentials: its exchange and impersonation requests, not keyturn's, are what the
emulator must accept.

Run by tests/gcp-emulator/tests/python_client.rs, which starts the emulator binary with
`--print-key` and sets:

    GCP_EMULATOR_ENDPOINT        http://127.0.0.1:PORT
    GCP_EMULATOR_KEY_FILE        the key file --print-key wrote (role admin)
    GCP_EMULATOR_PROJECT_ID      accepted in requests
    GCP_EMULATOR_PROJECT_NUMBER  used in every returned name

Needs the packages in requirements.txt beside this file (scripts/test.sh installs them).
"""

import json
import os
import unittest
import urllib.request
import uuid

import google_crc32c
from google.api_core import exceptions
from google.api_core.client_options import ClientOptions
from google.auth import exceptions as auth_exceptions
from google.auth import identity_pool
from google.cloud import secretmanager
from google.oauth2 import service_account

ENDPOINT = os.environ["GCP_EMULATOR_ENDPOINT"]
KEY_FILE = os.environ["GCP_EMULATOR_KEY_FILE"]
PROJECT_ID = os.environ["GCP_EMULATOR_PROJECT_ID"]
PROJECT_NUMBER = os.environ["GCP_EMULATOR_PROJECT_NUMBER"]
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
LOCATION = "us-central1"

State = secretmanager.SecretVersion.State


def client(credentials=None):
    """The client exactly as the brief's users build it: REST, endpoint, key-file credentials."""
    credentials = credentials or service_account.Credentials.from_service_account_file(KEY_FILE)
    return secretmanager.SecretManagerServiceClient(
        transport="rest",
        client_options=ClientOptions(api_endpoint=ENDPOINT),
        credentials=credentials,
    )


def admin(path, body=None):
    """The emulator's own admin API (not Google's): faults, extra keys, request counts."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{ENDPOINT}/emulator/{path}",
        data=data,
        method="GET" if data is None else "POST",
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def status_of(error):
    """`error.status` of the JSON body Google answered with."""
    return error.response.json()["error"]["status"]


class GoogleClient(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sm = client()

    # ---- helpers ----

    def create(self, prefix="py", **fields):
        secret_id = unique(prefix)
        secret = {"replication": {"automatic": {}}, **fields}
        return self.sm.create_secret(
            request={"parent": f"projects/{PROJECT_ID}", "secret_id": secret_id, "secret": secret}
        )

    def add(self, secret, data, checksum=False):
        payload = {"data": data}
        if checksum:
            payload["data_crc32c"] = google_crc32c.value(data)
        return self.sm.add_secret_version(request={"parent": secret.name, "payload": payload})

    def access(self, name):
        return self.sm.access_secret_version(request={"name": name})

    def assert_refused(self, exception_class, status, call, message_part=None):
        with self.assertRaises(exception_class) as caught:
            call()
        self.assertIs(type(caught.exception), exception_class, caught.exception)
        self.assertEqual(status_of(caught.exception), status, caught.exception)
        if message_part is not None:
            self.assertIn(message_part, caught.exception.message)
        return caught.exception

    # ---- create ----

    def test_create_answers_with_the_project_number_in_the_name(self):
        secret = self.create(labels={"team": "edge"})
        self.assertRegex(secret.name, rf"^projects/{PROJECT_NUMBER}/secrets/py-[0-9a-f]{{12}}$")
        self.assertIn("automatic", secret.replication)
        self.assertEqual(dict(secret.labels), {"team": "edge"})
        self.assertTrue(secret.etag.startswith('"') and secret.etag.endswith('"'), secret.etag)
        self.assertGreater(secret.create_time.timestamp(), 0)

    def test_create_of_an_existing_secret_is_a_conflict(self):
        secret = self.create()
        secret_id = secret.name.rsplit("/", 1)[1]
        request = {
            "parent": f"projects/{PROJECT_ID}",
            "secret_id": secret_id,
            "secret": {"replication": {"automatic": {}}},
        }
        self.assert_refused(
            exceptions.Conflict, "ALREADY_EXISTS", lambda: self.sm.create_secret(request=request), "already exists"
        )

    def test_create_with_a_secret_type_sends_it_as_a_number(self):
        # With numeric enums the client sends "secretType": 50 and reads 50 back.
        secret = self.create(secret_type=secretmanager.Secret.SecretType.OTHER)
        self.assertEqual(secret.secret_type, secretmanager.Secret.SecretType.OTHER)

    # ---- add ----

    def test_add_without_a_checksum_gets_one_computed(self):
        secret = self.create()
        version = self.add(secret, b"s3cret")
        self.assertEqual(version.name, f"{secret.name}/versions/1")
        self.assertEqual(version.state, State.ENABLED)
        self.assertFalse(version.client_specified_payload_checksum)
        response = self.access(version.name)
        self.assertEqual(response.payload.data, b"s3cret")
        self.assertEqual(response.payload.data_crc32c, google_crc32c.value(b"s3cret"))

    def test_add_with_a_checksum_is_verified_and_flagged(self):
        secret = self.create()
        version = self.add(secret, b"checked", checksum=True)
        self.assertTrue(version.client_specified_payload_checksum)
        self.assertEqual(self.access(version.name).payload.data_crc32c, google_crc32c.value(b"checked"))

    def test_add_with_a_wrong_checksum_is_refused(self):
        secret = self.create()
        payload = {"data": b"checked", "data_crc32c": google_crc32c.value(b"checked") ^ 1}
        self.assert_refused(
            exceptions.BadRequest,
            "INVALID_ARGUMENT",
            lambda: self.sm.add_secret_version(request={"parent": secret.name, "payload": payload}),
        )

    # ---- access ----

    def test_access_by_number(self):
        secret = self.create()
        first = self.add(secret, b"one")
        self.add(secret, b"two")
        response = self.access(first.name)
        self.assertEqual(response.name, first.name)
        self.assertEqual(response.payload.data, b"one")

    def test_access_latest_is_the_newest_version_by_its_number(self):
        secret = self.create()
        self.add(secret, b"one")
        self.add(secret, b"two")
        response = self.access(f"{secret.name}/versions/latest")
        self.assertEqual(response.name, f"{secret.name}/versions/2")
        self.assertEqual(response.payload.data, b"two")

    def test_access_by_project_id_answers_with_the_number(self):
        secret = self.create()
        self.add(secret, b"one")
        secret_id = secret.name.rsplit("/", 1)[1]
        response = self.access(f"projects/{PROJECT_ID}/secrets/{secret_id}/versions/latest")
        self.assertEqual(response.name, f"{secret.name}/versions/1")

    def test_access_by_alias_and_alias_update(self):
        secret = self.create()
        self.add(secret, b"one")
        self.add(secret, b"two")
        secret.version_aliases["current"] = 1
        updated = self.sm.update_secret(request={"secret": secret, "update_mask": {"paths": ["version_aliases"]}})
        self.assertEqual(dict(updated.version_aliases), {"current": 1})
        self.assertNotEqual(updated.etag, secret.etag)
        self.assertEqual(self.access(f"{secret.name}/versions/current").payload.data, b"one")

        updated.version_aliases["current"] = 2
        moved = self.sm.update_secret(request={"secret": updated, "update_mask": {"paths": ["version_aliases"]}})
        self.assertEqual(dict(self.sm.get_secret(request={"name": secret.name}).version_aliases), {"current": 2})
        self.assertEqual(moved.etag, self.sm.get_secret(request={"name": secret.name}).etag)
        response = self.access(f"{secret.name}/versions/current")
        self.assertEqual(response.name, f"{secret.name}/versions/2")
        self.assertEqual(response.payload.data, b"two")
        self.assertEqual(
            self.sm.get_secret_version(request={"name": f"{secret.name}/versions/current"}).name,
            f"{secret.name}/versions/2",
        )

    def test_access_retries_unavailable_by_googles_own_policy(self):
        # Google's retry config retries AccessSecretVersion on UNAVAILABLE; the emulator's 503
        # must be one the client recognises.
        secret = self.create()
        version = self.add(secret, b"retry")
        before = admin("requests")["access"]
        admin("faults/fail", {"count": 1, "status": "UNAVAILABLE", "method": "access"})
        self.assertEqual(self.access(version.name).payload.data, b"retry")
        self.assertEqual(admin("requests")["access"], before + 2)

    # ---- etags ----

    def test_stale_etag_is_refused_on_update_state_change_and_delete(self):
        secret = self.create()
        version = self.add(secret, b"v")
        current = self.sm.update_secret(
            request={"secret": {"name": secret.name, "labels": {"a": "1"}}, "update_mask": {"paths": ["labels"]}}
        )
        stale = {"name": secret.name, "labels": {"a": "2"}, "etag": secret.etag}
        self.assert_refused(
            exceptions.BadRequest,
            "FAILED_PRECONDITION",
            lambda: self.sm.update_secret(request={"secret": stale, "update_mask": {"paths": ["labels"]}}),
        )
        self.assert_refused(
            exceptions.BadRequest,
            "FAILED_PRECONDITION",
            lambda: self.sm.delete_secret(request={"name": secret.name, "etag": secret.etag}),
        )
        disabled = self.sm.disable_secret_version(request={"name": version.name, "etag": version.etag})
        self.assert_refused(
            exceptions.BadRequest,
            "FAILED_PRECONDITION",
            lambda: self.sm.enable_secret_version(request={"name": version.name, "etag": version.etag}),
        )
        # The current etags still work.
        self.sm.enable_secret_version(request={"name": version.name, "etag": disabled.etag})
        self.sm.delete_secret(request={"name": secret.name, "etag": current.etag})

    # ---- states ----

    def test_disabled_version_cannot_be_accessed_until_enabled(self):
        secret = self.create()
        version = self.add(secret, b"v")
        disabled = self.sm.disable_secret_version(request={"name": version.name})
        self.assertEqual(disabled.state, State.DISABLED)
        self.assert_refused(
            exceptions.BadRequest,
            "FAILED_PRECONDITION",
            lambda: self.access(version.name),
            f"Secret Version [{version.name}] is in DISABLED state.",
        )
        self.assert_refused(
            exceptions.BadRequest, "FAILED_PRECONDITION", lambda: self.access(f"{secret.name}/versions/latest")
        )
        enabled = self.sm.enable_secret_version(request={"name": version.name})
        self.assertEqual(enabled.state, State.ENABLED)
        self.assertEqual(self.access(version.name).payload.data, b"v")

    def test_destroy_wipes_the_version_for_good(self):
        secret = self.create()
        version = self.add(secret, b"gone")
        destroyed = self.sm.destroy_secret_version(request={"name": version.name, "etag": version.etag})
        self.assertEqual(destroyed.state, State.DESTROYED)
        self.assertGreater(destroyed.destroy_time.timestamp(), 0)
        self.assert_refused(
            exceptions.BadRequest,
            "FAILED_PRECONDITION",
            lambda: self.access(version.name),
            "is in DESTROYED state.",
        )
        self.assert_refused(
            exceptions.BadRequest,
            "FAILED_PRECONDITION",
            lambda: self.sm.enable_secret_version(request={"name": version.name}),
        )
        self.assertEqual(self.sm.get_secret_version(request={"name": version.name}).state, State.DESTROYED)

    # ---- list ----

    def test_list_secrets_pages_through_every_match(self):
        run = uuid.uuid4().hex[:12]
        names = {self.create(labels={"run": run}).name for _ in range(3)}
        pager = self.sm.list_secrets(
            request={"parent": f"projects/{PROJECT_ID}", "page_size": 2, "filter": f"labels.run={run}"}
        )
        pages = list(pager.pages)
        self.assertEqual(len(pages), 2)
        self.assertEqual({s.name for page in pages for s in page.secrets}, names)

    def test_list_versions_newest_first_with_a_state_filter(self):
        secret = self.create()
        for data in (b"1", b"2", b"3"):
            self.add(secret, data)
        self.sm.disable_secret_version(request={"name": f"{secret.name}/versions/2"})
        every = list(self.sm.list_secret_versions(request={"parent": secret.name}))
        self.assertEqual([v.name.rsplit("/", 1)[1] for v in every], ["3", "2", "1"])
        self.assertEqual([v.state for v in every], [State.ENABLED, State.DISABLED, State.ENABLED])
        enabled = self.sm.list_secret_versions(request={"parent": secret.name, "filter": "state:ENABLED"})
        self.assertEqual([v.name.rsplit("/", 1)[1] for v in enabled], ["3", "1"])

    # ---- not found, delete ----

    def test_missing_secret_is_not_found_on_every_method(self):
        name = f"projects/{PROJECT_ID}/secrets/{unique('missing')}"
        message = f"Secret [{name.replace(PROJECT_ID, PROJECT_NUMBER)}] not found or has no versions."
        calls = [
            lambda: self.sm.get_secret(request={"name": name}),
            lambda: self.access(f"{name}/versions/latest"),
            lambda: self.sm.add_secret_version(request={"parent": name, "payload": {"data": b"x"}}),
            lambda: self.sm.delete_secret(request={"name": name}),
            lambda: list(self.sm.list_secret_versions(request={"parent": name})),
        ]
        for call in calls:
            self.assert_refused(exceptions.NotFound, "NOT_FOUND", call, message)

    def test_delete_removes_the_secret_and_its_versions(self):
        secret = self.create()
        version = self.add(secret, b"v")
        self.sm.delete_secret(request={"name": secret.name, "etag": secret.etag})
        self.assert_refused(exceptions.NotFound, "NOT_FOUND", lambda: self.sm.get_secret(request={"name": secret.name}))
        self.assert_refused(exceptions.NotFound, "NOT_FOUND", lambda: self.access(version.name))

    # ---- regional ----

    def test_regional_secret_lifecycle_on_the_same_host(self):
        regional = client()  # a regional client points at the regional endpoint; the emulator serves both
        parent = f"projects/{PROJECT_ID}/locations/{LOCATION}"
        secret_id = unique("regional")
        secret = regional.create_secret(request={"parent": parent, "secret_id": secret_id, "secret": {}})
        self.assertEqual(secret.name, f"projects/{PROJECT_NUMBER}/locations/{LOCATION}/secrets/{secret_id}")
        self.assertNotIn("replication", secret)
        version = regional.add_secret_version(request={"parent": secret.name, "payload": {"data": b"eu"}})
        self.assertEqual(version.name, f"{secret.name}/versions/1")
        response = regional.access_secret_version(request={"name": f"{secret.name}/versions/latest"})
        self.assertEqual(response.payload.data, b"eu")
        listed = [s.name for s in regional.list_secrets(request={"parent": parent})]
        self.assertIn(secret.name, listed)
        # Regional and global secrets are separate namespaces.
        self.assert_refused(
            exceptions.NotFound,
            "NOT_FOUND",
            lambda: self.sm.get_secret(request={"name": f"projects/{PROJECT_ID}/secrets/{secret_id}"}),
        )
        regional.delete_secret(request={"name": secret.name})
        self.assert_refused(exceptions.NotFound, "NOT_FOUND", lambda: regional.get_secret(request={"name": secret.name}))

    def test_regional_secret_takes_no_replication(self):
        request = {
            "parent": f"projects/{PROJECT_ID}/locations/{LOCATION}",
            "secret_id": unique("regional"),
            "secret": {"replication": {"automatic": {}}},
        }
        self.assert_refused(exceptions.BadRequest, "INVALID_ARGUMENT", lambda: self.sm.create_secret(request=request))

    # ---- credentials ----

    def test_scoped_credentials_sign_a_scope_claim_instead_of_an_audience(self):
        scoped = service_account.Credentials.from_service_account_file(KEY_FILE, scopes=[CLOUD_PLATFORM])
        secret = client(scoped).create_secret(
            request={
                "parent": f"projects/{PROJECT_ID}",
                "secret_id": unique("scoped"),
                "secret": {"replication": {"automatic": {}}},
            }
        )
        self.assertTrue(secret.name.startswith(f"projects/{PROJECT_NUMBER}/"))

    def test_a_key_without_the_permission_is_denied(self):
        secret = self.create()
        self.add(secret, b"v")
        email = f"{unique('reader')}@{PROJECT_ID}.iam.gserviceaccount.com"
        key = admin("service-accounts", {"email": email, "role": "accessor"})
        accessor = client(service_account.Credentials.from_service_account_info(key))
        response = accessor.access_secret_version(request={"name": f"{secret.name}/versions/latest"})
        self.assertEqual(response.payload.data, b"v")
        self.assert_refused(
            exceptions.Forbidden,
            "PERMISSION_DENIED",
            lambda: accessor.get_secret(request={"name": secret.name}),
            "Permission 'secretmanager.secrets.get' denied",
        )

    # ---- Workload Identity Federation (google-auth's identity_pool credentials) ----

    def federated_client(self, subject, impersonate=None, lifetime=3600, role="accessor"):
        """A client whose credentials are an external_account configuration, as gcloud writes
        one, with a subject token of the emulator's test issuer in a file."""
        info = admin("info")
        token = admin("oidc/tokens", {"subject": subject, "lifetimeSeconds": lifetime})["token"]
        token_file = os.path.join(os.environ.get("TMPDIR", "/tmp"), unique("subject-token"))
        with open(token_file, "w") as f:
            f.write(token)
        self.addCleanup(os.remove, token_file)
        config = {
            "type": "external_account",
            "audience": info["workloadIdentityAudience"],
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": info["stsUri"],
            "credential_source": {"file": token_file, "format": {"type": "text"}},
        }
        if impersonate:
            admin("federation/impersonation", {"subject": subject, "serviceAccount": impersonate, "role": role})
            config["service_account_impersonation_url"] = (
                f"{ENDPOINT}/v1/projects/-/serviceAccounts/{impersonate}:generateAccessToken"
            )
        else:
            admin("federation/grants", {"subject": subject, "role": role})
        return client(identity_pool.Credentials.from_info(config, scopes=[CLOUD_PLATFORM]))

    def test_a_federated_workload_reads_with_its_own_principal(self):
        secret = self.create()
        self.add(secret, b"federated")
        reader = self.federated_client(unique("workload"))
        response = reader.access_secret_version(request={"name": f"{secret.name}/versions/latest"})
        self.assertEqual(response.payload.data, b"federated")

    def test_a_federated_workload_reads_through_an_impersonated_account(self):
        secret = self.create()
        self.add(secret, b"impersonated")
        account = f"{unique('reader')}@{PROJECT_ID}.iam.gserviceaccount.com"
        reader = self.federated_client(unique("workload"), impersonate=account)
        response = reader.access_secret_version(request={"name": f"{secret.name}/versions/latest"})
        self.assertEqual(response.payload.data, b"impersonated")

    def test_an_expired_subject_token_is_refused_with_invalid_grant(self):
        secret = self.create()
        self.add(secret, b"v")
        reader = self.federated_client(unique("workload"), lifetime=1)
        admin("clock/advance", {"seconds": 5})
        with self.assertRaises(auth_exceptions.OAuthError) as caught:
            reader.access_secret_version(request={"name": f"{secret.name}/versions/latest"})
        self.assertIn("invalid_grant", str(caught.exception))


if __name__ == "__main__":
    print(
        f"google-cloud-secret-manager {secretmanager.__version__} against {ENDPOINT}",
        flush=True,
    )
    unittest.main(verbosity=2)
