// Drives Adobe's @adobe/target-nodejs-sdk against a profilebase server, configured only with
// the SDK's documented options. Usage: node node_sdk_session.js HOST:PORT CLIENT ORG_ID
// Prints one JSON object: the tntIds and ids each call's reply carried, and every host the
// SDK sent a request to (from its debug log). tests/test_sdks.py runs it and checks the rest.
const TargetClient = require("@adobe/target-nodejs-sdk");

const [serverDomain, client, organizationId] = process.argv.slice(2);
const hosts = [];
const errors = [];
const logger = {
  // The SDK logs each request as (prefix, "Request sent", decisioningMethod, host, body).
  debug: (...args) => {
    const at = args.indexOf("Request sent");
    if (at >= 0) hosts.push(args[at + 2]);
  },
  error: (...args) => errors.push(args.map(String).join(" ")),
};

async function main() {
  const target = TargetClient.create({ client, organizationId, serverDomain, secure: false, logger });
  const first = await target.getOffers({
    request: {
      execute: {
        pageLoad: { profileParameters: { favorite: "shoes" } },
        mboxes: [{ name: "hero", index: 0, profileParameters: { heroSeen: "yes" } }],
      },
      prefetch: {
        views: [{ name: "home", profileParameters: { view: "home" } }],
        mboxes: [{ name: "promo", index: 0 }],
      },
    },
  });
  const cookie = first.targetCookie.value;
  const second = await target.getOffers({
    request: { execute: { pageLoad: { profileParameters: { visits: "2" } } } },
    targetCookie: cookie,
  });
  const notified = await target.sendNotifications({
    request: {
      notifications: [
        {
          id: "n-1",
          type: "display",
          timestamp: Date.now(),
          mbox: { name: "hero" },
          profileParameters: { notified: "yes" },
        },
      ],
    },
    targetCookie: second.targetCookie.value,
  });
  const attributes = await target.getAttributes(["hero"], {
    targetCookie: second.targetCookie.value,
  });
  const linked = await target.getOffers({
    request: {
      id: { thirdPartyId: "crm-node" },
      execute: { pageLoad: { profileParameters: { signedIn: "yes" } } },
    },
    targetCookie: second.targetCookie.value,
  });
  const last = await target.getOffers({
    request: { execute: { pageLoad: {} } },
    targetCookie: linked.targetCookie.value,
  });
  return {
    tntIds: [first, second, notified, linked, last].map((r) => r.response.id.tntId),
    thirdPartyId: linked.response.id.thirdPartyId,
    client: first.response.client,
    locationHintCookie: [first, second, linked, last].map((r) => r.targetLocationHintCookie || null),
    attributes: attributes.asObject(),
    hosts,
    errors,
  };
}

main().then(
  (result) => process.stdout.write(JSON.stringify(result) + "\n"),
  (error) => {
    process.stderr.write(`target-nodejs-sdk failed: ${error && error.stack}\n${errors.join("\n")}\n`);
    process.exit(1);
  },
);
