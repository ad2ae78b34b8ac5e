"""slixmpp's own live integration suite (`itests/` of its source distribution)
against a running Meerkat node. The itests themselves run unchanged.

The itests are written for a CI server that serves the accounts' domain on the
standard ports: STARTTLS on 5222 and direct TLS on 5223 of the domain's
address, with a certificate the system trusts. Here the node listens on 5222
and 5223 of a loopback address of its own (`--address`), which stands in for
the domain's address: name resolution of the domain yields that address (no
SRV records, as on the itests' CI server). The certificate is trusted through
`SSL_CERT_FILE`, which the caller sets. The accounts come from the usual
variables CI_ACCOUNT1, CI_ACCOUNT1_PASSWORD, CI_ACCOUNT2, CI_ACCOUNT2_PASSWORD.

slixmpp runs unmodified. Its XEP-0059 result set iterator ends a walk where
`first index + items == count`; paging backwards (test_mam's test_mam_iterate)
that holds for the very first page, so Meerkat leaves the optional `index` out
of a page read backwards, as ejabberd and Prosody leave it out of every page,
and the iterator goes on until a page comes back empty.

Every set-up and test method runs under a timeout (`--timeout`), so a hang
fails that test alone. Each test's outcome is printed as it finishes; the last
line is a JSON summary: {"results": [{"test", "outcome", "seconds",
"detail"}], "passed", "failed"} with outcome one of passed, failed, error,
skipped.

Usage: slixmpp_itests.py --sdist DIR --address IP [--timeout S] MODULE...
where DIR is the unpacked slixmpp source distribution and each MODULE names a
file of DIR/itests without `.py` (test_ping, test_mam, ...).
"""

import argparse
import asyncio
import functools
import inspect
import json
import logging
import sys
import time
import traceback
import unittest


def route_domain_to(address):
    """Makes every slixmpp client connect to `address` where it would look up
    the domain (or connect to a host given by name)."""
    from slixmpp.xmlstream.xmlstream import XMLStream

    async def get_dns_records(self, domain, port=None):
        return [("", domain, address, port or self.default_port)]

    attempt = XMLStream._attempt_connection

    async def attempt_connection(self, host, port, tls, server_hostname):
        if host == self.default_domain:
            host = address
        return await attempt(self, host, port, tls, server_hostname)

    XMLStream.get_dns_records = get_dns_records
    XMLStream._attempt_connection = attempt_connection


def with_timeout(method, seconds):
    @functools.wraps(method)
    async def wrapped(*args, **kwargs):
        return await asyncio.wait_for(method(*args, **kwargs), seconds)

    return wrapped


def bound_async_methods(case, seconds):
    """Puts a timeout on the case's async set-up and test method."""
    for name in ("asyncSetUp", case._testMethodName):
        method = getattr(case, name)
        if inspect.iscoroutinefunction(method):
            setattr(case, name, with_timeout(method, seconds))


class Recorder(unittest.TextTestResult):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.records = []
        self._started = {}

    def startTest(self, test):
        self._started[test.id()] = time.monotonic()
        super().startTest(test)

    def _record(self, test, outcome, detail=""):
        took = time.monotonic() - self._started.get(test.id(), time.monotonic())
        name = test.id().removeprefix("itests.")
        self.records.append({"test": name, "outcome": outcome, "seconds": round(took, 2), "detail": detail})

    def addSuccess(self, test):
        super().addSuccess(test)
        self._record(test, "passed")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._record(test, "failed", self._summary(err))

    def addError(self, test, err):
        super().addError(test, err)
        self._record(test, "error", self._summary(err))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._record(test, "skipped", reason)

    @staticmethod
    def _summary(err):
        kind, value, _ = err
        if kind in (asyncio.TimeoutError, TimeoutError):
            return "timed out"
        if hasattr(value, "iq") and hasattr(value, "condition"):
            # slixmpp's IqError: the condition says more than the whole stanza.
            return f"{kind.__name__}: {value.condition} {value.text or ''}".strip()
        lines = traceback.format_exception_only(kind, value)
        return " ".join(line.strip() for line in lines)[:500]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sdist", required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--log", help="file for slixmpp's debug log")
    parser.add_argument("modules", nargs="+")
    args = parser.parse_args()

    if args.log:
        logging.basicConfig(filename=args.log, level=logging.DEBUG, force=True)
    else:
        logging.disable(logging.CRITICAL)
    # After site-packages: the itests run against the installed slixmpp.
    sys.path.append(args.sdist)
    route_domain_to(args.address)

    import importlib

    suite = unittest.TestSuite()
    for name in args.modules:
        module = importlib.import_module(f"itests.{name}")
        for case in module.suite:
            bound_async_methods(case, args.timeout)
            suite.addTest(case)

    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=2, resultclass=Recorder)
    result = runner.run(suite)
    records = result.records
    print(
        json.dumps(
            {
                "results": records,
                "passed": sum(r["outcome"] == "passed" for r in records),
                "failed": sum(r["outcome"] in ("failed", "error") for r in records),
            }
        )
    )
    sys.exit(0 if result.wasSuccessful() else 1)


if __name__ == "__main__":
    main()
