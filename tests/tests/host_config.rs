//! `[[host_config]]`: module sections that differ on one host. One node
//! serves `localhost` as `[modules]` says and `other.test` with archives and
//! in-band registration off and client state indication on (off in
//! `[modules]`); each stream offers, and each host answers, what its own
//! modules do.
#![allow(clippy::unwrap_used)]

use meerkat_tests::client::{stanza_error, Client, Security};
use meerkat_tests::{NodeOptions, TestNode};
use meerkat_xmpp::element::Element;
use meerkat_xmpp::ns;

const PW: &str = "pw";
const MAM: &str = "urn:xmpp:mam:2";
const CSI: &str = "urn:xmpp:csi:0";
const REGISTER_FEATURE: &str = "http://jabber.org/features/iq-register";
const CAPS_NODE: &str = "urn:meerkat:caps";

const CONFIG: &str = "[modules.mod_csi]\nenabled = false\n\
    [[host_config]]\nhost = \"other.test\"\n\
    [host_config.modules.mod_mam]\nenabled = false\n\
    [host_config.modules.mod_register]\nenabled = false\n\
    [host_config.modules.mod_csi]\nenabled = true\n";

fn node() -> TestNode {
    let node = TestNode::start_with(NodeOptions {
        hosts: vec!["localhost".into(), "other.test".into()],
        extra_toml: CONFIG.into(),
        ..Default::default()
    });
    node.add_user_at("localhost", "alice", PW);
    node.add_user_at("other.test", "alice", PW);
    node
}

/// The `ver` of the server's entity capabilities in the last features.
fn caps_ver(c: &Client) -> String {
    let f = c.features.as_ref().unwrap();
    f.get_child("c", ns::CAPS).and_then(|c| c.attr("ver")).unwrap_or_else(|| panic!("no caps in {f}")).to_owned()
}

/// The features of a disco#info answer from `to` (with `node`, if any), or its error.
async fn disco_info(c: &mut Client, to: &str, node: Option<&str>) -> Result<Vec<String>, String> {
    let mut query = Element::new("query", ns::DISCO_INFO);
    if let Some(n) = node {
        query.set_attr("node", n);
    }
    let iq = Element::new("iq", ns::CLIENT).with_attr("type", "get").with_attr("to", to).with_child(query);
    let res = c.iq(iq).await.unwrap();
    if res.attr("type") != Some("result") {
        return Err(stanza_error(&res).unwrap_or_default());
    }
    let q = res.get_child("query", ns::DISCO_INFO).unwrap();
    Ok(q.elements().filter(|e| e.name == "feature").filter_map(|e| e.attr("var")).map(str::to_owned).collect())
}

/// An archive query to the user's own archive: `Ok` with the answer's type,
/// or the error condition.
async fn mam_query(c: &mut Client) -> Result<(), String> {
    let iq = Element::new("iq", ns::CLIENT)
        .with_attr("type", "set")
        .with_child(Element::new("query", MAM).with_attr("queryid", "q"));
    let res = c.iq(iq).await.unwrap();
    match res.attr("type") {
        Some("result") => Ok(()),
        _ => Err(stanza_error(&res).unwrap_or_default()),
    }
}

#[tokio::test]
async fn each_host_offers_and_answers_with_its_own_modules() {
    let node = node();

    // Before authentication: registration and the server's capabilities.
    let here = Client::connect(node.c2s, "localhost", Security::StartTls).await.unwrap();
    let there = Client::connect(node.c2s, "other.test", Security::StartTls).await.unwrap();
    assert!(here.has_feature("register", REGISTER_FEATURE), "{:?}", here.features);
    assert!(!there.has_feature("register", REGISTER_FEATURE), "{:?}", there.features);
    let (ver_here, ver_there) = (caps_ver(&here), caps_ver(&there));
    assert_ne!(ver_here, ver_there, "the hosts' modules differ, so must their capabilities");

    // After authentication: client state indication on other.test only.
    let mut a = Client::login(node.c2s, "localhost", "alice", PW, Some("r")).await.unwrap();
    let mut b = Client::login(node.c2s, "other.test", "alice", PW, Some("r")).await.unwrap();
    assert!(!a.has_feature("csi", CSI), "{:?}", a.features);
    assert!(b.has_feature("csi", CSI), "{:?}", b.features);
    assert_eq!(caps_ver(&a), ver_here);
    assert_eq!(caps_ver(&b), ver_there);

    // Each server's disco#info is its own host's, and so is its caps node.
    let features_here = disco_info(&mut a, "localhost", None).await.unwrap();
    let features_there = disco_info(&mut b, "other.test", None).await.unwrap();
    assert!(features_here.iter().any(|f| f == "jabber:iq:register"), "{features_here:?}");
    assert!(!features_there.iter().any(|f| f == "jabber:iq:register"), "{features_there:?}");
    let node_here = format!("{CAPS_NODE}#{ver_here}");
    let node_there = format!("{CAPS_NODE}#{ver_there}");
    assert_eq!(disco_info(&mut a, "localhost", Some(&node_here)).await, Ok(features_here));
    assert_eq!(disco_info(&mut b, "other.test", Some(&node_there)).await, Ok(features_there));
    assert_eq!(disco_info(&mut b, "other.test", Some(&node_here)).await, Err("item-not-found".into()));

    // Archives: on localhost only, in the account's disco#info and in answers.
    let own_here = disco_info(&mut a, "alice@localhost", None).await.unwrap();
    let own_there = disco_info(&mut b, "alice@other.test", None).await.unwrap();
    assert!(own_here.iter().any(|f| f == MAM), "{own_here:?}");
    assert!(!own_there.iter().any(|f| f == MAM), "{own_there:?}");
    assert_eq!(mam_query(&mut a).await, Ok(()));
    assert_eq!(mam_query(&mut b).await, Err("service-unavailable".into()));

    // CSI works where it runs: an <inactive/> is taken and the session goes on.
    b.send(&Element::new("inactive", CSI)).await.unwrap();
    let ping = Element::new("iq", ns::CLIENT)
        .with_attr("type", "get")
        .with_attr("to", "other.test")
        .with_child(Element::new("ping", "urn:xmpp:ping"));
    assert_eq!(b.iq(ping).await.unwrap().attr("type"), Some("result"));
}
