//! XEP-0115 entity capabilities: the verification string of a disco#info
//! answer and its hash, so that an answer can be checked against the `ver`
//! a presence announced before it is trusted for every entity that
//! announces the same `ver`.

use base64::Engine as _;
use sha1::{Digest as _, Sha1};
use sha2::Sha256;

use crate::element::Element;
use crate::ns;

/// The `ver` of a disco#info `<query/>` under the hash `algo` (`sha-1` or
/// `sha-256`, XEP-0115 §5.1 and §5.4), or `None` when the answer cannot have
/// a trustworthy `ver`: an unknown hash, duplicate identities or features,
/// or an extended form without its `FORM_TYPE` or with it twice.
pub fn ver(query: &Element, algo: &str) -> Option<String> {
    let s = verification_string(query)?;
    let digest = match algo {
        "sha-1" => Sha1::digest(s.as_bytes()).to_vec(),
        "sha-256" => Sha256::digest(s.as_bytes()).to_vec(),
        _ => return None,
    };
    Some(base64::engine::general_purpose::STANDARD.encode(digest))
}

/// XEP-0115 §5.1's string, or `None` where §5.4 says not to trust it.
fn verification_string(query: &Element) -> Option<String> {
    let mut identities: Vec<String> = query
        .elements()
        .filter(|e| e.name == "identity" && e.ns == ns::DISCO_INFO)
        .map(|i| {
            format!(
                "{}/{}/{}/{}",
                i.attr("category").unwrap_or_default(),
                i.attr("type").unwrap_or_default(),
                i.attr("xml:lang").unwrap_or_default(),
                i.attr("name").unwrap_or_default()
            )
        })
        .collect();
    let mut features: Vec<&str> = query
        .elements()
        .filter(|e| e.name == "feature" && e.ns == ns::DISCO_INFO)
        .filter_map(|f| f.attr("var"))
        .collect();
    identities.sort_unstable();
    features.sort_unstable();
    if has_duplicates(&identities) || has_duplicates(&features) {
        return None;
    }
    let mut forms = Vec::new();
    for x in query.elements().filter(|e| e.name == "x" && e.ns == ns::DATA_FORMS) {
        let fields: Vec<&Element> = x.elements().filter(|f| f.name == "field").collect();
        let types: Vec<&&Element> = fields.iter().filter(|f| f.attr("var") == Some("FORM_TYPE")).collect();
        let [form_type] = types.as_slice() else { return None };
        let mut s = String::new();
        push(&mut s, &values(form_type).join(""));
        let mut rest: Vec<(&str, Vec<String>)> =
            fields.iter().filter_map(|f| f.attr("var").filter(|v| *v != "FORM_TYPE").map(|v| (v, values(f)))).collect();
        rest.sort_by(|a, b| a.0.cmp(b.0));
        for (var, mut vals) in rest {
            push(&mut s, var);
            vals.sort_unstable();
            for v in vals {
                push(&mut s, &v);
            }
        }
        forms.push(s);
    }
    forms.sort_unstable();
    let mut s = String::new();
    for i in &identities {
        push(&mut s, i);
    }
    for f in &features {
        push(&mut s, f);
    }
    for f in forms {
        s.push_str(&f);
    }
    Some(s)
}

fn push(s: &mut String, part: &str) {
    s.push_str(part);
    s.push('<');
}

fn values(field: &Element) -> Vec<String> {
    field.elements().filter(|v| v.name == "value").map(|v| v.text()).collect()
}

fn has_duplicates<T: PartialEq>(sorted: &[T]) -> bool {
    sorted.windows(2).any(|w| w[0] == w[1])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse_element(xml: &str) -> Result<Element, crate::parser::ElementError> {
        crate::parser::parse_element(xml, crate::parser::Limits { max_stanza_size: 65536, max_depth: 16 })
    }

    /// XEP-0115 §5.2, the simple example.
    #[test]
    fn the_simple_example() {
        let q = parse_element(
            "<query xmlns='http://jabber.org/protocol/disco#info' node='http://code.google.com/p/exodus#QgayPKawpkPSDYmwT/WM94uAlu0='>\
             <identity category='client' name='Exodus 0.9.1' type='pc'/>\
             <feature var='http://jabber.org/protocol/caps'/><feature var='http://jabber.org/protocol/disco#info'/>\
             <feature var='http://jabber.org/protocol/disco#items'/><feature var='http://jabber.org/protocol/muc'/></query>",
        )
        .unwrap();
        assert_eq!(ver(&q, "sha-1").as_deref(), Some("QgayPKawpkPSDYmwT/WM94uAlu0="));
    }

    /// XEP-0115 §5.3, the complex example (languages and an extended form).
    #[test]
    fn the_complex_example() {
        let q = parse_element(
            "<query xmlns='http://jabber.org/protocol/disco#info' node='http://psi-im.org#q07IKJEyjvHSyhy//CH0CxmKi8w='>\
             <identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>\
             <identity xml:lang='el' category='client' name='Ψ 0.11' type='pc'/>\
             <feature var='http://jabber.org/protocol/caps'/><feature var='http://jabber.org/protocol/disco#info'/>\
             <feature var='http://jabber.org/protocol/disco#items'/><feature var='http://jabber.org/protocol/muc'/>\
             <x xmlns='jabber:x:data' type='result'>\
             <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>\
             <field var='ip_version'><value>ipv4</value><value>ipv6</value></field>\
             <field var='os'><value>Mac</value></field><field var='os_version'><value>10.5.1</value></field>\
             <field var='software'><value>Psi</value></field><field var='software_version'><value>0.11</value></field></x></query>",
        )
        .unwrap();
        assert_eq!(ver(&q, "sha-1").as_deref(), Some("q07IKJEyjvHSyhy//CH0CxmKi8w="));
    }

    #[test]
    fn answers_that_cannot_be_trusted_have_no_ver() {
        let dup = parse_element(
            "<query xmlns='http://jabber.org/protocol/disco#info'><feature var='a'/><feature var='a'/></query>",
        )
        .unwrap();
        assert_eq!(ver(&dup, "sha-1"), None);
        let no_type = parse_element(
            "<query xmlns='http://jabber.org/protocol/disco#info'><x xmlns='jabber:x:data' type='result'>\
             <field var='os'><value>Mac</value></field></x></query>",
        )
        .unwrap();
        assert_eq!(ver(&no_type, "sha-1"), None);
        let fine =
            parse_element("<query xmlns='http://jabber.org/protocol/disco#info'><feature var='a'/></query>").unwrap();
        assert_eq!(ver(&fine, "md5"), None);
        assert!(ver(&fine, "sha-256").is_some());
    }
}
