//! Decodes MQTT packets given as hex on the command line (or stdin) and prints them.
//!
//! ```text
//! cargo run -p mqtt-examples --bin mqtt-decode -- --version 5 "30 0a 00 03 61 2f 62 00 68 69 21 21"
//! ```

use std::io::Read;
use std::process::ExitCode;

use mqtt_codec::{decode, DecodeOptions, Packet, ProtocolVersion, Status};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1).peekable();
    let mut version = ProtocolVersion::V3_1_1;
    let mut hex = String::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "-V" | "--version" => {
                version = match args.next().as_deref() {
                    Some("3" | "31") => ProtocolVersion::V3_1,
                    Some("4" | "311") => ProtocolVersion::V3_1_1,
                    Some("5") => ProtocolVersion::V5,
                    other => {
                        eprintln!("unknown protocol version {other:?}: use 31, 311 or 5");
                        return ExitCode::from(2);
                    }
                }
            }
            "-h" | "--help" => {
                println!(
                    "usage: mqtt-decode [--version 31|311|5] [HEX...]   (reads stdin without HEX)"
                );
                return ExitCode::SUCCESS;
            }
            _ => {
                hex.push_str(&a);
                hex.push(' ');
            }
        }
    }
    if hex.trim().is_empty() {
        if let Err(e) = std::io::stdin().read_to_string(&mut hex) {
            eprintln!("reading stdin: {e}");
            return ExitCode::from(2);
        }
    }
    let bytes = match parse_hex(&hex) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let opts = DecodeOptions::new(version);
    let mut input = &bytes[..];
    while !input.is_empty() {
        match decode(input, &opts) {
            Ok(Status::Complete { packet, consumed }) => {
                print_packet(&packet, consumed);
                // A CONNECT fixes the level for the packets after it.
                if let Packet::Connect(c) = packet {
                    println!("  (the rest decodes as {:?})", c.protocol);
                }
                input = &input[consumed..];
            }
            Ok(Status::Incomplete { needed }) => {
                println!("incomplete: {needed} more byte(s) needed");
                return ExitCode::from(1);
            }
            Err(e) => {
                println!("error: {e} (reason code {:?})", e.reason_code());
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}

fn print_packet(packet: &Packet<'_>, len: usize) {
    println!("{:?} ({len} bytes)", packet.packet_type());
    println!("  {packet:#?}");
}

fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    let digits: String = s
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ',' && *c != ':')
        .collect();
    let digits = digits.trim_start_matches("0x");
    if !digits.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&digits[i..i + 2], 16).map_err(|e| format!("bad hex at {i}: {e}"))
        })
        .collect()
}
