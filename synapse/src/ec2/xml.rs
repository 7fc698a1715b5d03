//! Parsing EC2 Query API responses: `DescribeInstancesResponse` and error documents.
//!
//! Only the fields synapse needs are read, each at its exact place in the document
//! (an instance's network interfaces also carry `privateIpAddress` elements, so
//! matching on names alone would be wrong).

use std::collections::BTreeMap;

use quick_xml::events::Event;
use quick_xml::Reader;

/// One instance as described by EC2, before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RawInstance {
    pub id: String,
    pub private_ip: Option<String>,
    pub private_dns: Option<String>,
    pub state: Option<String>,
    pub tags: BTreeMap<String, String>,
}

/// One page of a `DescribeInstances` response.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Page {
    pub instances: Vec<RawInstance>,
    pub next_token: Option<String>,
}

/// An EC2 error document: `<Response><Errors><Error><Code>…</Code><Message>…`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub code: String,
    pub message: String,
}

/// Parses a `DescribeInstancesResponse`. Fails on malformed XML or a document of
/// another kind, so a truncated or garbled page never reads as "no instances".
pub(crate) fn parse_describe_instances(xml: &str) -> Result<Page, String> {
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<String> = Vec::new();
    let mut page = Page::default();
    let mut current: Option<RawInstance> = None;
    // Depth of the current instance's `item` element in `stack`.
    let mut instance_depth = 0;
    let mut tag_key: Option<String> = None;
    let mut tag_value: Option<String> = None;
    let mut saw_root = false;
    let mut text_buf = String::new();
    loop {
        match reader.read_event() {
            Err(e) => {
                return Err(format!(
                    "malformed XML at byte {}: {e}",
                    reader.error_position()
                ))
            }
            Ok(Event::Eof) => break,
            Ok(Event::Start(e)) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                if stack.is_empty() {
                    if name != "DescribeInstancesResponse" {
                        return Err(format!("unexpected document <{name}>"));
                    }
                    saw_root = true;
                }
                stack.push(name);
                text_buf.clear();
                let n = stack.len();
                if n >= 2 && stack[n - 1] == "item" && stack[n - 2] == "instancesSet" {
                    current = Some(RawInstance::default());
                    instance_depth = n;
                }
            }
            Ok(Event::Empty(_)) => {}
            Ok(Event::End(_)) => {
                let n = stack.len();
                let text = std::mem::take(&mut text_buf);
                if let (Some(inst), Some(leaf)) = (current.as_mut(), stack.last()) {
                    let rel = n - instance_depth;
                    match (rel, leaf.as_str()) {
                        (1, "instanceId") => inst.id = text,
                        (1, "privateIpAddress") => inst.private_ip = Some(text),
                        (1, "privateDnsName") => {
                            inst.private_dns = Some(text).filter(|t| !t.is_empty())
                        }
                        (2, "name") if stack[n - 2] == "instanceState" => inst.state = Some(text),
                        (3, "key") if stack[n - 3] == "tagSet" => tag_key = Some(text),
                        (3, "value") if stack[n - 3] == "tagSet" => tag_value = Some(text),
                        (2, "item") if stack[n - 2] == "tagSet" => {
                            if let (Some(k), Some(v)) = (tag_key.take(), tag_value.take()) {
                                inst.tags.insert(k, v);
                            }
                        }
                        _ => {}
                    }
                } else if n == 2 && stack[1] == "nextToken" {
                    page.next_token = Some(text).filter(|t| !t.is_empty());
                }
                if n == instance_depth {
                    if let Some(inst) = current.take() {
                        page.instances.push(inst);
                    }
                }
                stack.pop();
            }
            Ok(Event::Text(t)) => {
                let text = t.decode().map_err(|e| format!("bad text: {e}"))?;
                text_buf.push_str(&text);
            }
            Ok(Event::GeneralRef(r)) => text_buf.push(resolve_ref(&r)?),
            Ok(_) => {}
        }
    }
    if !saw_root || !stack.is_empty() {
        return Err("truncated document".into());
    }
    Ok(page)
}

/// Resolves `&amp;`-style and numeric character references.
fn resolve_ref(r: &quick_xml::events::BytesRef<'_>) -> Result<char, String> {
    if let Some(c) = r
        .resolve_char_ref()
        .map_err(|e| format!("bad reference: {e}"))?
    {
        return Ok(c);
    }
    let name = r.decode().map_err(|e| format!("bad reference: {e}"))?;
    quick_xml::escape::resolve_predefined_entity(&name)
        .and_then(|s| s.chars().next())
        .ok_or_else(|| "unknown entity".to_owned())
}

/// Reads the first error of an EC2 error document, if it is one.
pub(crate) fn parse_error(xml: &str) -> Option<ApiError> {
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<String> = Vec::new();
    let mut err = ApiError::default();
    loop {
        match reader.read_event() {
            Err(_) | Ok(Event::Eof) => break,
            Ok(Event::Start(e)) => {
                stack.push(String::from_utf8_lossy(e.local_name().as_ref()).into_owned());
            }
            Ok(Event::End(_)) => {
                stack.pop();
            }
            Ok(Event::Text(t)) => {
                let text = t.decode().map(|s| s.into_owned()).unwrap_or_default();
                let n = stack.len();
                if n >= 2 && stack[n - 2] == "Error" {
                    match stack[n - 1].as_str() {
                        "Code" if err.code.is_empty() => err.code = text,
                        "Message" if err.message.is_empty() => err.message = text,
                        _ => {}
                    }
                }
            }
            Ok(_) => {}
        }
    }
    (!err.code.is_empty()).then_some(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>r-1</requestId>
  <reservationSet>
    <item>
      <reservationId>r-0</reservationId>
      <groupSet/>
      <instancesSet>
        <item>
          <instanceId>i-0001</instanceId>
          <instanceState><code>16</code><name>running</name></instanceState>
          <privateDnsName>ip-127-0-1-4.ec2.internal</privateDnsName>
          <privateIpAddress>127.0.1.4</privateIpAddress>
          <networkInterfaceSet>
            <item>
              <privateIpAddress>10.9.9.9</privateIpAddress>
              <privateIpAddressesSet><item><privateIpAddress>10.9.9.8</privateIpAddress></item></privateIpAddressesSet>
            </item>
          </networkInterfaceSet>
          <tagSet>
            <item><key>servicename</key><value>true</value></item>
            <item><key>Name</key><value>web &amp; co</value></item>
          </tagSet>
        </item>
        <item>
          <instanceId>i-0002</instanceId>
          <instanceState><code>16</code><name>running</name></instanceState>
          <privateDnsName></privateDnsName>
          <privateIpAddress>127.0.1.5</privateIpAddress>
        </item>
      </instancesSet>
    </item>
  </reservationSet>
  <nextToken>tok-2</nextToken>
</DescribeInstancesResponse>"#;

    #[test]
    fn reads_instances_at_their_exact_place() {
        let page = parse_describe_instances(PAGE).unwrap();
        assert_eq!(page.next_token.as_deref(), Some("tok-2"));
        assert_eq!(page.instances.len(), 2);
        let a = &page.instances[0];
        assert_eq!(a.id, "i-0001");
        assert_eq!(a.private_ip.as_deref(), Some("127.0.1.4"));
        assert_eq!(a.private_dns.as_deref(), Some("ip-127-0-1-4.ec2.internal"));
        assert_eq!(a.state.as_deref(), Some("running"));
        assert_eq!(a.tags["Name"], "web & co");
        assert_eq!(a.tags["servicename"], "true");
        let b = &page.instances[1];
        assert_eq!(b.private_dns, None);
        assert!(b.tags.is_empty());
    }

    #[test]
    fn malformed_and_foreign_documents_fail() {
        assert!(parse_describe_instances(&PAGE[..PAGE.len() / 2]).is_err());
        assert!(parse_describe_instances("<ListAllMyBucketsResult/>").is_err());
        assert!(parse_describe_instances("not xml at all").is_err());
        assert!(parse_describe_instances("").is_err());
    }

    #[test]
    fn error_documents() {
        let e = parse_error(
            "<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>x</RequestID></Response>",
        )
        .unwrap();
        assert_eq!(e.code, "RequestLimitExceeded");
        assert_eq!(e.message, "Request limit exceeded.");
        assert_eq!(parse_error(PAGE), None);
    }
}
